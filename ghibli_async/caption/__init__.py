"""Captioning with Gemini: quota buckets, the scheduling policy, the client wrapper, caption text."""
