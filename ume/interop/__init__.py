"""Checkpoint interoperability with other toolkits: WeNet import/export (ume/interop/wenet.py).

Example:
    >>> from ume.interop.wenet import import_wenet, export_wenet
    >>> import_wenet("exp/aishell_u2pp", "runs/wenet_dense")
"""
