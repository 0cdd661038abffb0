"""One run of the protocol: data ready, train (learned methods), test on whole volumes, metrics.json.

The method's config names how it runs (``method.procedure``): :func:`train_and_test` for the learned
methods, :func:`register_classically` for the classical baselines (``method.register``).

Runs are seeded, resumable (a killed run restarts from its last checkpoint) and skipped when their
metrics.json exists, unless ``force=true``; a failed run leaves ``failed.json`` instead. A folder holding
a run made with another config is refused (naming the keys that differ) unless ``force=true``.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
import traceback
import warnings
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytorch_lightning as pl
import torch
from hydra.utils import get_method, instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from pytorch_lightning.loggers import WandbLogger

import intermod
from intermod.checkpoint import CheckpointMetadata
from intermod.data.layout import DatasetError, check_dataset
from intermod.evaluation.figures import log_registration_figure
from intermod.evaluation.report import (evaluate_subject, format_table, subject_volumes, summarise, summarise_field,
                                       summarise_images)
from intermod.io import atomic_write_json, atomic_write_text
from intermod.runs import CHECKPOINT_DIR, CONFIG_FILE, FAILED_FILE, METRICS_FILE, RunIdentity, config_differences
from intermod.wandb_mode import offline_unless_logged_in
from intermod.spatial import warp, warp_labels

# Emitted by every Trainer.fit with torch 2.13 + Lightning 2.6 (see STACK-NOTES); not actionable.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")

TABLE_COLUMNS = ("dice_before", "dice_after", "asd_before", "asd_after", "hd95_before", "hd95_after")


class RunError(RuntimeError):
    """A run could not complete; the message says why and what to do."""


@contextmanager
def file_lock(path: Path):
    """Serialise work on a shared resource (dataset synthesis) between jobs of a sweep."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ensure_dataset(data_cfg: DictConfig) -> Path:
    """The dataset root, synthesised first if it is the phantom and absent; then checked."""
    root = Path(data_cfg.root)
    synth = data_cfg.get("synthesize")
    if not (root / "dataset.json").exists() and synth is not None:
        from intermod.data.synthesis import synthesize_dataset

        with file_lock(root.parent / f".{root.name}.lock"):
            if not (root / "dataset.json").exists():
                print(f"synthesising the phantom ({synth.n_subjects} subjects, {synth.grid} grid) in {root}")
                synthesize_dataset(root, synth.n_subjects, synth.grid, synth.seed, workers=os.cpu_count() or 1)
    problems = check_dataset(root)
    if problems:
        shown = "\n  ".join(problems[:10])
        more = f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
        raise RunError(f"dataset {root} is not usable:\n  {shown}{more}\n"
                       f"Fix the files (intermod-check-data {root} lists every problem) and run again.")
    return root


def make_loggers(cfg: DictConfig, identity: RunIdentity) -> list:
    """The configured loggers; a W&B run is named after the job, grouped with its sweep (the experiment
    name) and tagged with its swept values, which also go into its config under ``swept``."""
    loggers = []
    for logger_cfg in (cfg.get("logger") or {}).values():
        if "WandbLogger" in logger_cfg._target_:
            logger_cfg = {**OmegaConf.to_container(logger_cfg, resolve=True), "name": identity.label,
                          "tags": identity.tags}
            if offline_unless_logged_in():
                logger_cfg["offline"] = True
                print("W&B: no API key found, logging offline; upload later with `wandb sync <run>/wandb/offline-run-*`")
        loggers.append(instantiate(logger_cfg))
    for logger in loggers:
        logger.log_hyperparams({**OmegaConf.to_container(cfg, resolve=True), "swept": identity.swept})
    return loggers


def make_callbacks(cfg: DictConfig) -> dict[str, pl.Callback]:
    """The configured callbacks (conf/callbacks/) by name, those set to null left out; training tests the
    weights ``model_checkpoint`` keeps."""
    return {name: instantiate(callback) for name, callback in cfg.callbacks.items() if callback is not None}


def make_datamodule(cfg: DictConfig):
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    data_cfg.pop("synthesize", None)
    datamodule = instantiate(data_cfg)
    datamodule.setup()
    return datamodule


def make_module(cfg: DictConfig, datamodule, figure_callback=None):
    """The LightningModule of a learned method, with what a checkpoint must record to register later."""
    module = instantiate(cfg.model, loss=instantiate(cfg.method.loss), labels=datamodule.labels,
                         figure_callback=figure_callback, refinement=instantiate(cfg.method.refinement))
    module.checkpoint_metadata = CheckpointMetadata(
        method=cfg.method.name, net=OmegaConf.to_container(cfg.model.net, resolve=True), inference=cfg.model.inference,
        spacing=datamodule.spacing, orientation=datamodule.orientation, ct_window=datamodule.normalise.ct_window,
        mr_percentiles=datamodule.normalise.mr_percentiles, labels=datamodule.labels,
        patch_size=OmegaConf.to_container(cfg.data, resolve=True)["patch_size"], label_free=datamodule.spec.label_free)
    return module


# What a job with method.network_from may differ in from the job that trained its network.
TEST_ONLY_KEYS = ("method.name:", "method.network_from:", "method.refinement")


def trained_elsewhere(cfg: DictConfig, out: Path) -> Path | None:
    """The best checkpoint of the job ``method.network_from`` names (this job's folder but for the method)
    when it trained with this job's config, all but what only testing reads; None: train here."""
    source = cfg.method.get("network_from")
    if not source or cfg.method.name not in out.parts:
        return None
    parts = list(out.parts)
    parts[len(parts) - 1 - parts[::-1].index(cfg.method.name)] = source
    folder = Path(*parts)
    best = folder / CHECKPOINT_DIR / "best.ckpt"
    if not (best.exists() and (folder / METRICS_FILE).exists()):
        print(f"no finished {source} job in {folder}: training this job's own network")
        return None
    stored = OmegaConf.to_container(OmegaConf.load(folder / CONFIG_FILE))
    differences = [d for d in config_differences(stored, OmegaConf.to_container(cfg, resolve=True))
                   if not d.startswith(TEST_ONLY_KEYS)]
    if differences:
        print(f"{folder} trained with another config ({'; '.join(differences)}): training this job's own network")
        return None
    return best


def train_and_test(cfg: DictConfig, out: Path, datamodule, loggers: list) -> dict | None:
    """Train the network on patches, then register the test subjects with the best checkpoint.

    Returns None on ranks other than 0 of a multi-process job."""
    module = make_module(cfg, datamodule, partial(log_registration_figure, out_dir=str(out / "figures")))
    callbacks = make_callbacks(cfg)
    trainer = instantiate(cfg.trainer, logger=loggers or False, callbacks=list(callbacks.values()),
                          default_root_dir=str(out))
    if trainer.world_size > 1 and cfg.trainer.get("use_distributed_sampler", True):
        # The patch queue gives each rank its own subjects; Lightning's sampler would shard its patches again.
        raise RunError(f"trainer.use_distributed_sampler must be false with {trainer.world_size} processes: the patch "
                       f"queue already gives each rank its own subjects (trainer=ddp and trainer=slurm set it)")
    last = out / CHECKPOINT_DIR / "last.ckpt"
    resumed_from = str(last) if last.exists() else None
    reused = trained_elsewhere(cfg, out)
    start = time.perf_counter()
    if reused:
        print(f"testing the network {reused} trained (same config but for testing)")
    else:
        if resumed_from:
            print(f"resuming from {last}")
        trainer.fit(module, datamodule=datamodule, ckpt_path=resumed_from)
    train_s = time.perf_counter() - start
    if trainer.global_rank != 0:
        return None  # under SLURM every task runs this function; rank 0 alone tests and writes

    best = str(reused or callbacks["model_checkpoint"].best_model_path or (last if last.exists() else ""))
    if best:
        module.load_state_dict(torch.load(best, map_location="cpu", weights_only=False)["state_dict"])
    # Testing on one device, in this process, whatever the training strategy (ddp_spawn included).
    tester = pl.Trainer(accelerator=cfg.trainer.accelerator, devices=1, precision=cfg.trainer.precision,
                        logger=loggers or False, enable_progress_bar=False, enable_checkpointing=False,
                        default_root_dir=str(out))
    start = time.perf_counter()
    tester.test(module, datamodule=datamodule)
    return {"subjects": module.test_results, "checkpoint": best, "resumed_from": resumed_from,
            "network_from": str(reused) if reused else None,
            "epochs_trained": trainer.current_epoch, "global_step": trainer.global_step,
            "timings": {"train_s": train_s, "test_s": time.perf_counter() - start}}


def register_classically(cfg: DictConfig, out: Path, datamodule, loggers: list) -> dict:
    """Register the test subjects with a classical method, ``method.register``; no training. Labels are
    warped with the returned field by intermod's own nearest-neighbour warp, exactly as for the networks."""
    register = instantiate(cfg.method.register)
    subjects, seconds = {}, []
    for batch in datamodule.test_dataloader():
        def numpy(key):
            return batch[key][0, 0].numpy()
        spacing = batch["spacing"][0].tolist()
        result = register(numpy("ct"), numpy("mr"), numpy("mr_labels"), spacing, seed=cfg.seed)
        field = torch.from_numpy(result.field)[None]
        registered = {"field": field, "mr_warped": warp(batch["mr"], field),
                      "mr_labels_warped": warp_labels(batch["mr_labels"], field)}
        subject = batch["subject_id"][0]
        subjects[subject] = evaluate_subject(subject_volumes(batch, registered), result.field, datamodule.labels,
                                             spacing)
        subjects[subject]["seconds"] = result.seconds
        seconds.append(result.seconds)
        log_registration_figure(batch, registered, datamodule.labels, str(out / "figures"), "test", loggers)
    return {"subjects": subjects, "timings": {"register_s": seconds}}


def add_ground_truth(subjects: dict[str, dict], datamodule) -> None:
    """Each test subject with a known field (the phantom's) also gets its metrics registered by that field:
    the ceiling a method can reach at this resolution, Table 1's Ground truth column."""
    for batch in datamodule.test_dataloader():
        subject = batch["subject_id"][0]
        field = datamodule.ground_truth_field(subject)
        if field is None or subject not in subjects:
            continue
        registered = {"mr_warped": warp(batch["mr"], field), "mr_labels_warped": warp_labels(batch["mr_labels"], field)}
        subjects[subject]["ground_truth"] = evaluate_subject(subject_volumes(batch, registered), field[0].numpy(),
                                                             datamodule.labels, batch["spacing"][0].tolist())


def log_test_results(loggers: list, subjects: dict, summary: dict, image_summary: dict, field_summary: dict) -> None:
    """Test metrics to every logger (W&B keeps the last as the run's summary); to W&B also per-subject
    tables. Then close the W&B run."""
    means = {f"test/{m}_{organ}": row[m]["mean"] for organ, row in summary.items()
             for m in ("dice_before", "dice_after", "asd_before", "asd_after", "hd95_after")}
    means.update({f"test/{key}": value["mean"] for key, value in {**image_summary, **field_summary}.items()})
    for logger in loggers:
        logger.log_metrics(means)
        if isinstance(logger, WandbLogger):
            if summary:
                rows = [[subject, organ, *(values[k] for k in TABLE_COLUMNS)] for subject, result in subjects.items()
                        for organ, values in result["organs"].items()]
                logger.log_table("test/per_subject", columns=["subject", "organ", *TABLE_COLUMNS], data=rows)
            columns = list(image_summary)
            logger.log_table("test/per_subject_images", columns=["subject", *columns],
                             data=[[subject, *(result["images"][k] for k in columns)]
                                   for subject, result in subjects.items()])
            logger.experiment.finish()  # writes the run's files; the process may go on


def check_folder(cfg: DictConfig, out: Path) -> bool:
    """Whether ``out`` already holds this job's finished run (skip it). A run there made with another
    config is refused, unless force=true, which clears it to start again from scratch."""
    metrics_path, config_path = out / METRICS_FILE, out / CONFIG_FILE
    earlier = metrics_path.exists() or (out / CHECKPOINT_DIR).exists()
    if not earlier:
        return False
    if cfg.force:
        shutil.rmtree(out / CHECKPOINT_DIR, ignore_errors=True)
        print(f"force=true: re-running {out} from scratch; its {METRICS_FILE} is replaced when the run ends")
        return False
    if config_path.exists():
        stored = OmegaConf.to_container(OmegaConf.load(config_path))
        differences = config_differences(stored, OmegaConf.to_container(cfg, resolve=True))
        if differences:
            raise RunError(f"{out} holds a run made with another config ({'; '.join(differences)}): "
                           f"give this job another name= or override, or force=true to replace that run")
    if metrics_path.exists():
        done = json.loads(metrics_path.read_text())
        print(f"{metrics_path} exists: skipping this run (force=true re-runs it)\n"
              f"{format_table(done['summary'], done.get('image_summary'), summarise_field(done['subjects']))}")
        return True
    return False


def run(cfg: DictConfig, output_dir: str | Path, swept: dict[str, str] | None = None) -> float | None:
    """Run one job (``swept``: the values its sweep varies, besides method, fold and seed); returns the mean
    test Dice after registration (for sweepers; on a label-free dataset the mean NCC of the paired MR and
    the registered MR)."""
    out = Path(output_dir)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)  # where loggers and checkpoints write (Hydra's run folder, or the caller's)
    metrics_path = out / METRICS_FILE
    identity = RunIdentity(cfg.name, cfg.method.name, cfg.fold, cfg.seed, dict(swept or {}))
    if check_folder(cfg, out):
        return None
    (out / FAILED_FILE).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
    pl.seed_everything(cfg.seed, workers=True)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)  # oversubscribed cores slow every run several-fold
    try:
        ensure_dataset(cfg.data)
        datamodule = make_datamodule(cfg)
        loggers = make_loggers(cfg, identity)
        procedure = get_method(cfg.method.procedure)  # train_and_test or register_classically
        result = procedure(cfg, out, datamodule, loggers)
        if result is None:
            return None
        add_ground_truth(result["subjects"], datamodule)
        result.update(split=datamodule.split.as_dict(), labels=datamodule.labels, label_free=datamodule.spec.label_free,
                      spacing=datamodule.spacing)
        summary = summarise(result["subjects"], result["labels"])
        image_summary = summarise_images(result["subjects"])
        field_summary = summarise_field(result["subjects"])
        log_test_results(loggers, result["subjects"], summary, image_summary, field_summary)
    except (RunError, DatasetError) as err:
        atomic_write_json(out / FAILED_FILE, {"error": str(err), "method": cfg.method.name, "fold": cfg.fold,
                                              "swept": identity.swept})
        raise RunError(str(err)) from err
    except Exception as err:
        atomic_write_json(out / FAILED_FILE, {"error": f"{type(err).__name__}: {err}", "method": cfg.method.name,
                                              "fold": cfg.fold, "swept": identity.swept,
                                              "traceback": traceback.format_exc()})
        traceback.print_exc()
        raise RunError(f"{type(err).__name__}: {err} (traceback in {out / FAILED_FILE})") from err
    atomic_write_json(metrics_path, {"method": cfg.method.name, "fold": cfg.fold, "seed": cfg.seed,
                                     "name": cfg.name, "swept": identity.swept, "intermod_version": intermod.__version__,
                                     **result, "summary": summary, "image_summary": image_summary,
                                     "field_summary": field_summary})
    table = format_table(summary, image_summary, field_summary)
    print(f"\n{cfg.method.name}, fold {cfg.fold}, test subjects {', '.join(result['subjects'])}:\n{table}\n")
    print(f"wrote {metrics_path}")
    if not summary:  # label-free: the sweepers' objective is the image similarity the loss optimises
        return image_summary["ncc_mr_after"]["mean"]
    return float(sum(row["dice_after"]["mean"] for row in summary.values()) / len(summary))
