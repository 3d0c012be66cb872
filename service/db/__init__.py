"""Engine and session factories, declarative base."""
