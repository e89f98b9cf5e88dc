"""sage-bench: DomainBed-style domain-generalization experiments with SAGE and its baselines."""

__version__ = "0.1.0"
