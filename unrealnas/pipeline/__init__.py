"""``unrealnas pipeline +experiment=<name> launcher=slurm|local``: a paper experiment end to end.

Planning (:mod:`.plan`), submission (:mod:`.submit`) and the table stage (:mod:`.tables`).

An experiment overlay (``conf/experiment/<name>.yaml``, schema :mod:`unrealnas.config.experiment`)
defines a sweep: methods x datasets x class counts x seeds, each search retrained on one or more
targets. The pipeline turns it into four kinds of stages, ONE job array each, chained by
dependencies::

    generate (one task per distinct dataset)
      -afterok->  search (one task per method, dataset, class count, seed)
      -afterany-> retrain (one task per search and retrain entry; train.run_id fixed, so reruns skip)
      [-afterany-> finetune (retrains that start from another retrain's weights, e.g. CheXpert)]
      -afterany-> table (tables and figures of exactly this sweep's runs)

``afterany`` after the searches and retrains: one failed run must be reported in the table, not
block it. With ``launcher=local`` the same stages run here, one after another. Finished tasks are
skipped (their run directory is complete), so resubmitting a finished sweep submits nothing.

The table stage writes ``<paths.runs>/tables/<experiment>/table.{md,tex,csv}`` and ``figures/``.
"""
