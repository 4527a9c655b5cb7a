"""gateway: the one HTTP API shop frontends call; composes the fleet over gRPC."""
