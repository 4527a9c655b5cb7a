"""Per-key token buckets: a burst goes through, the rest waits its turn, keys are independent."""

from services.gateway.limits import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_burst_passes_then_the_key_must_wait_for_refill():
    clock = Clock()
    limiter = RateLimiter(rate_per_s=2, burst=3, clock=clock)
    assert [limiter.allow("a") for _ in range(3)] == [0, 0, 0]
    assert limiter.allow("a") == 0.5
    assert limiter.allow("b") == 0  # another key has its own bucket
    clock.now += 0.5
    assert limiter.allow("a") == 0


def test_zero_rate_means_no_limit_and_old_keys_are_forgotten():
    assert all(RateLimiter(0, 1).allow("a") == 0 for _ in range(100))
    clock = Clock()
    limiter = RateLimiter(rate_per_s=1, burst=1, max_keys=2, clock=clock)
    limiter.allow("a")
    limiter.allow("b")
    limiter.allow("c")  # evicts "a", the least recently seen
    assert limiter.allow("a") == 0
    assert limiter.allow("c") > 0
