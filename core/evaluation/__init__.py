"""Accuracy evaluation: the NoW protocol (`now`) and a synthetic ground-truth generator (`synthetic`).

Importing this package imports nothing heavy; `now` needs numpy and scipy only, `synthetic` needs torch.
"""
