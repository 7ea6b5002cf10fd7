"""ume: Upcycling Mixture-of-Experts for scalable, efficient bilingual ASR."""

__version__ = "0.1.0"
