"""One Tune trial = one Ray Train job.

`driver.run_trial` is the Tune function trainable (the trial's driver): it builds the trial's
Ray Train trainer and retries a failed run by its cause (`search.trial.failures`). Its workers run
`worker.train_worker`, a thin Ray wrapper around `trainables.loop.fit` that turns each epoch's
report into `ray.train.report` with a checkpoint (`checkpoints`), and resumes from the last
checkpoint when Ray restarts the job. `settings` holds what every trial of a search shares.

Two paths (`search.seam.versions`): on a verified Ray the job's Train controller runs in the
trial's driver, which keeps its worker for its next trial (`search.seam.controller`); on any other
Ray, or with IMAGESEARCH_RAY_PATH=plain, the trial fits a `TorchTrainer` as Ray documents.
"""
