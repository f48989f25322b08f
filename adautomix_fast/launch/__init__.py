"""Where a comparison's runs train: one after another or one per GPU on this machine
(``local``), or as the jobs of a SLURM job array through submitit (``slurm``).

Every launcher trains the same (method, seed) runs into the same run folders with the same
command lines (``jobs.training_argv``), records each run's outcome in ``jobs/<run>.json`` of the
comparison folder (``jobs.JobRecord``), and leaves the table to ``compare``: a run folder whose
every epoch is trained is never trained again, an interrupted one resumes from its checkpoint.
"""
