"""Transfer sets: what the student learns from, built from the teacher's answers and kept on disk.

* :mod:`~db3_timm.transfer.label` -- :func:`label_dataset`, whole-dataset DB3 soft-labelling (sharded, resumable).
* :mod:`~db3_timm.transfer.build` -- the one way transfer sets are built from real images or from none.
* :mod:`~db3_timm._disk` -- the on-disk format: a saved ``datasets.DatasetDict`` written shard by shard.
* :mod:`~db3_timm.transfer.export` -- :func:`export_parquet`, Parquet + PNG for tools that want images.
"""
