"""Build the Ray Tune search: trainable, searcher, scheduler, run settings.

    tuner = build_tuner(plan, space, reader, param_space, callbacks)
    grid = tuner.fit()

`plan` is a `search.driver.plan.Plan`, `space` the loaded space file, `reader` the search's
`search.data.reader.SplitReader` (resident arrays put once in the object store, or the streamed
data's descriptor; it reaches the trials through `tune.with_parameters`, never through their
config), `param_space` the space's domains with the
command line's fixed settings laid over them (`search.driver.inputs.param_space`) and
`callbacks` Tune callbacks (W&B logging), kept out of `Plan` because every trial receives it.
The trainable (which launcher, which resources) comes from `search.driver.launch`.
Searchers: our Optuna TPE searcher (`search.driver.searcher`, told each trial's best epoch;
its sampler `--tpe`'s settings over the measured defaults, `search.driver.tpe`) behind a
`ConcurrencyLimiter` (default), Ray's stock `OptunaSearch` with Optuna's defaults
(`ray-optuna`: what most Tune scripts run, for comparisons), W&B's Bayesian engine
(`search.tracking.engine`), or random / a repeated config when nothing is searched.
Scheduler: ASHA on the plan's metric (`scheduler_settings`): `max_t` the planned epochs
(`trainables.config.planned_epochs`, as the searcher, the progress line and the tables read
them), its grace period and reduction factor from the space's `early_terminate` block; or,
with `--early-stopping none`, Tune's FIFO scheduler. The function launcher's trials reuse
their process for the next trial (`reuses_actors`).
"""

from __future__ import annotations

import logging

from ray import tune
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search import ConcurrencyLimiter

from search.data.reader import SplitReader
from search.driver.deadline import DeadlineSearcher, DeadlineVariants
from search.driver.launch import build_trainable, checkpoint_config
from search.driver.plan import Plan
from search.driver.relocate import relocatable
from search.driver.space import Space
from trainables.config import planned_epochs
from trainables.train import KNOBS

log = logging.getLogger("medsweep")


def build_searcher(plan: Plan, space: Space, epochs: int | None = None, earlier=None):
    """The searcher behind a ConcurrencyLimiter; with `--time-budget`, one that stops
    suggesting at the deadline (search.driver.deadline). `epochs`: what a trial that ran its
    budget ran (default: the space's, else TrainConfig's); Optuna and the W&B engine learn each
    trial's best epoch (search.driver.searcher). Optuna gets every objective of the plan
    (`--objective`) and `earlier`, the trials `--warm-start` carries (search.driver.warm_start)."""
    budget = plan.time_budget_s
    if epochs is None:
        epochs = planned_epochs(space.domains)
    if plan.searcher == "random" or not space.searched:  # nothing to search: repeat the config
        from ray.tune.search.basic_variant import BasicVariantGenerator

        kwargs = {"random_state": plan.seed, "max_concurrent": plan.max_concurrent}
        if budget is None:
            return BasicVariantGenerator(**kwargs)
        return DeadlineVariants(budget, **kwargs)
    if plan.searcher == "ray-optuna":  # what most Tune scripts do: told the last epoch
        from ray.tune.search.optuna import OptunaSearch

        searcher = OptunaSearch(sampler=optuna_sampler(plan, optuna_defaults=True))
    elif plan.searcher == "wandb-bayes":
        from search.tracking.engine import WandbSweepSearcher

        # The engine proposes the searched knobs only; fixed values stay in param_space, so
        # command-line overrides (--epochs) win as they do for the other searchers.
        knobs = {k: space.sweep_config["parameters"][k] for k in space.searched}
        config = {**space.sweep_config, "parameters": knobs}
        searcher = WandbSweepSearcher(config, method="bayes", seed=plan.seed)
    else:
        from search.driver.searcher import BestEpochOptuna, study_storage

        _, where = study_storage(plan.experiment_path, plan.name)
        log.info("Optuna study: optuna-dashboard %s", where)
        goals = plan.all_objectives
        several = {"metric": [m for m, _ in goals], "mode": [d for _, d in goals]}
        searcher = BestEpochOptuna(
            epochs,
            storage=where,
            study_name=plan.name,
            sampler=optuna_sampler(plan),
            home=plan.experiment_path,
            earlier=earlier,
            **(several if len(goals) > 1 else {}),
        )
    if budget is not None:
        searcher = DeadlineSearcher(searcher, budget)
    return ConcurrencyLimiter(searcher, max_concurrent=plan.max_concurrent)


def optuna_sampler(plan: Plan, optuna_defaults: bool = False):
    """The seeded TPE sampler: `--tpe` over medsweep's measured defaults (`search.driver.tpe`),
    or Optuna's own defaults (`optuna_defaults`: Ray's stock searcher as a Tune script builds
    it)."""
    import optuna

    from search.driver.tpe import parse_tpe

    if optuna_defaults:
        return optuna.samplers.TPESampler(seed=plan.seed)
    return parse_tpe(plan.tpe, plan.trials).sampler(plan.seed)


def scheduler_settings(space: Space, epochs: int) -> dict:
    """ASHA's arguments: `max_t` is the planned epochs (`trainables.config.planned_epochs`),
    the grace period and reduction factor the space's `early_terminate` block."""
    return {
        "time_attr": "training_iteration",
        "max_t": max(epochs, 1),
        "grace_period": min(space.grace_period, max(epochs, 1)),
        "reduction_factor": space.reduction_factor,
    }


def build_scheduler(plan: Plan, space: Space, epochs: int) -> ASHAScheduler | FIFOScheduler:
    """ASHA, or with `--early-stopping none` Tune's FIFO (every trial runs its epochs)."""
    if plan.early_stopping == "none":
        return FIFOScheduler()
    return ASHAScheduler(**scheduler_settings(space, epochs))


def build_tuner(
    plan: Plan,
    space: Space,
    reader: SplitReader,
    param_space: dict,
    callbacks: list | None = None,
    earlier: list | None = None,
) -> tune.Tuner:
    """The search; `callbacks` (W&B logging) and `earlier` (`--warm-start`'s trials) stay out
    of `Plan`, which every trial receives."""
    epochs = planned_epochs(param_space)
    searcher = build_searcher(plan, space, epochs, earlier)
    if plan.searcher == "wandb-bayes":  # the engine holds the space; Tune keeps the rest
        param_space = {k: v for k, v in param_space.items() if k not in space.searched}
    return tune.Tuner(
        build_trainable(plan, reader),
        param_space=param_space,
        tune_config=tune.TuneConfig(
            metric=plan.metric,
            mode=plan.mode,
            search_alg=relocatable(searcher),  # a copied folder's new trials stay in it
            scheduler=build_scheduler(plan, space, epochs),
            num_samples=plan.trials,
            reuse_actors=reuses_actors(plan),
            trial_dirname_creator=lambda trial: trial.trial_id,
        ),
        run_config=run_config(plan, callbacks),
    )


def reuses_actors(plan: Plan) -> bool:
    """Whether a trial's process runs the next trial (Tune's `reuse_actors`): for the function
    launcher, whose trials are one process each and all ask for the same resources. A new
    process costs 5-8 s per trial on 2 CPU cores (Python, torch, the data from the object
    store; README "Every slot busy"). Train's worker groups and fold tasks start their own."""
    return plan.launcher == "function" and plan.folds <= 1


def run_config(plan: Plan, callbacks: list | None = None) -> tune.RunConfig:
    """Where the experiment lives, what it keeps, how often it retries, what it prints."""
    return tune.RunConfig(
        name=plan.name,
        storage_path=plan.storage,
        checkpoint_config=checkpoint_config(plan, tune.CheckpointConfig),
        failure_config=tune.FailureConfig(max_failures=plan.max_failures),
        callbacks=callbacks or [],
        progress_reporter=tune.CLIReporter(
            metric_columns=["epoch", plan.metric],
            parameter_columns=list(KNOBS),
            max_report_frequency=30,
        ),
        verbose=plan.verbose,
    )
