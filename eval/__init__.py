"""Marquee's evaluation suite: retrieval and copy quality on held-out data, A/B, a report."""
