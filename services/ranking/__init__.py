"""ranking: orders candidates for a member with a swappable ranking model."""
