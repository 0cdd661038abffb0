"""The report: the paper's schedule from the configs, and the Markdown of a measurement."""
from __future__ import annotations

import time

from hydra import compose, initialize_config_dir

from intermod.cli import CONF_DIR
from throughput.flops import PAPER_GFLOP
from throughput.setups import Setup


def schedule() -> dict:
    """The paper's schedule from the configs: epochs and patches per epoch of one fold."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["experiment=paper"])
    data = cfg.data
    train_subjects = data.synthesize.n_subjects - data.n_test - data.n_val
    flips = 2 if data.flip_augment else 1
    return {"epochs": int(cfg.trainer.max_epochs),
            "patches_per_epoch": train_subjects * flips * int(data.samples_per_volume),
            "source": f"conf/experiment/paper.yaml (max_epochs {cfg.trainer.max_epochs}, early stopping may end "
                      f"sooner); {train_subjects} training subjects x {flips} flips x {data.samples_per_volume} "
                      "patches"}


def data_path(setup: Setup, args) -> str:
    if setup.data.startswith("device:"):
        return f"device sampler ({setup.data.split(':')[1]})"
    if setup.data == "queue":
        return f"TorchIO queue, {args.paper_workers} workers (the paper config's)"
    return f"TorchIO queue, {args.tuned_workers} workers, pinned memory on CUDA"


def describe(setup: Setup, args) -> dict:
    return {"config": setup.name, "data_path": data_path(setup, args), "batch": setup.batch,
            "precision": setup.precision,            "channels_last": setup.channels_last, "compile": setup.compile}


def fmt(value, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}"


def hours(seconds: float) -> str:
    return f"{seconds / 3600:,.1f} h" if seconds >= 3600 else f"{seconds / 60:,.0f} min"


def markdown(report: dict) -> str:
    s, flops = report["settings"], report["flops"]
    reduced = report["reduced"]
    lines = ["# Training throughput", "",
             f"Device: **{report['device']}**. {report['machine']}. Load average (1 min) "
             f"{report['load_average'][0]:.1f} at the start, {report['load_average'][1]:.1f} at the end "
             "(on a shared machine other jobs slow every row).", "",
             (f"**Reduced size** ({', '.join(reduced)}): these numbers show the method and the CPU's relative "
              "costs, not the paper-size speed; see README.md for the H100 command.") if reduced else
             "Paper size: the paper's U-Net (widths 32/64/128), 68^3 patches, dual loss.", "",
             f"Network widths {'/'.join(map(str, s['widths']))}, {s['patch_size']}^3 patches -> "
             f"{s['patch_size'] - 40}^3 fields, dual loss (two exact Eq. 5 warps, two NCCs, Eq. 4), SGD. "
             f"Data: {s['dataset']}. {s['steps']} timed steps after {s['warmup']} warm-up steps "
             f"(queue paths: enough steps for two queue refills of {s['queue_length']} patches; "
             f"{s['samples_per_volume']} patches per volume).", "",
             "## Patches per second and time to train one fold", "",
             f"Fold estimate: {report['schedule']['epochs']} epochs x {report['schedule']['patches_per_epoch']:,} "
             f"patches ({report['schedule']['source']}), at the end-to-end rate; validation (one whole-volume "
             "pass per epoch) and compilation (once) are not included.", "",
             "| config | data path | batch | precision | channels_last | compile | end to end (patches/s) | "
             "compute only (patches/s) | end to end / compute | speed-up vs paper (end to end) | TFLOP/s "
             "(compute only) | peak TFLOP/s | % of peak | one fold |",
             "|" + "---|" * 14]
    paper_rate = report["setups"][0]["patches_per_s_end_to_end"]
    for r in report["setups"]:
        lines.append(f"| {r['config']} | {r['data_path']} | {r['batch']} | {r['precision']} | "
                     f"{'yes' if r['channels_last'] else 'no'} | {'yes' if r['compile'] else 'no'} | "
                     f"{fmt(r['patches_per_s_end_to_end'])} | {fmt(r['patches_per_s_compute_only'])} | "
                     f"{fmt(r['end_to_end_over_compute'], 2)} | "
                     f"{fmt(r['patches_per_s_end_to_end'] / paper_rate, 1)}x | "
                     f"{fmt(r['tflops'], 2)} | {fmt(r['peak_tflops'], 1)} | {fmt(r['percent_of_peak'], 1)} | "
                     f"{hours(r['fold_seconds'])} |")
    sources = dict.fromkeys(f"precision {r['precision']}: {r['peak_source']}" for r in report["setups"])
    if any(r["end_to_end_over_compute"] > 1 for r in report["setups"]):
        lines += ["", "End to end above compute only is measurement noise: the two are separate, short windows."]
    lines += ["", f"Peak: {'; '.join(sources)}. TFLOP/s counts only the network's convolutions (below), "
              "so elementwise work, the loss and the "
              "optimiser are overhead against the peak.", "",
              "## FLOPs per patch (forward + backward)", "",
              f"- torch.utils.flop_counter.FlopCounterMode: {flops['counted_gflop']:.2f} GFLOP "
              f"(forward {flops['counted_forward_gflop']:.2f})",
              f"- from the conv layers' shapes: {flops['layer_gflop']:.2f} GFLOP (forward "
              f"{flops['layer_forward_gflop']:.2f}; backward = weight gradient + input gradient, none for the input)",
              f"- the paper's net (32/64/128, 68^3): {flops['paper_counted_gflop']:.2f} GFLOP counted, vs the "
              f"~{PAPER_GFLOP:.0f} GFLOP quoted in the issue (3 x forward = {3 * flops['paper_forward_gflop']:.1f}: "
              "the quote includes the first layer's input gradient, which training does not compute)", "",
              "## Data paths alone (batches on the device, no model)", "",
              "A data path keeps up with a setup when it delivers at least that setup's compute-only rate.", "",
              "| data path | batch | patches/s | keeps up with paper | keeps up with fast |", "|---|---|---|---|---|"]
    demand = {r["config"]: r["patches_per_s_compute_only"] for r in report["setups"]}
    for r in report["data_paths"]:
        keeps_up = ["yes" if r["patches_per_s"] >= demand[name] else "**no**" for name in ("paper", "fast")]
        lines.append(f"| {r['data_path']} | {r['batch']} | {fmt(r['patches_per_s'])} | {' | '.join(keeps_up)} |")
    lines += ["", "Which to use: the TorchIO queue (the default) whenever it keeps up: any dataset size, label-based "
              "sampling, no device memory. The device sampler when the queue cannot feed the network and the "
              "padded training volumes fit in device memory (18 bytes per voxel; 3.7 GB for the paper's 24). "
              "Its crop method: whichever row above is faster on the device.",
              "", "## Loss and warp", "",
              "| config | step (ms) | loss + warp forward and backward (ms) | share | peak device memory (GB) |",
              "|---|---|---|---|---|"]
    for r in report["setups"]:
        if r["config"] in report["profiles"]:
            lines.append(f"| {r['config']} | {fmt(r['step_ms'])} | {fmt(r['loss_warp_ms'])} | "
                         f"{fmt(100 * r['loss_warp_share'])} % | {fmt(r['peak_memory_gb'], 2)} |")
    for name, prof in report["profiles"].items():
        if not prof.get("total_ms"):
            lines += ["", f"## Profile of one step: {name}", "", f"No events recorded. {prof.get('error', '')}"]
            continue
        lines += ["", f"## Profile of one step: {name} ({prof['unit']}, {prof['total_ms']:.1f} ms in all)", "",
                  "| family | ms | share |", "|---|---|---|"]
        lines += [f"| {fam} | {ms:.2f} | {100 * ms / prof['total_ms']:.1f} % |"
                  for fam, ms in prof["families_ms"].items()]
        lines += ["", "Largest entries:", "", "| kernel / operator | family | ms |", "|---|---|---|"]
        lines += [f"| `{t['name']}` | {t['family']} | {t['ms']:.2f} |" for t in prof["top"]]
    lines += ["", "Families are assigned from kernel/operator names (patterns in the script), so a fused kernel "
              "counts once, under the first family its name matches; the loss's and the warp's elementwise "
              "operations count as elementwise, which is why the loss + warp time is measured on its own above.",
              "",
              f"Written by `experiments/benchmarks/train_throughput.py` on {time.strftime('%Y-%m-%d')}: "
              f"`{report['command']}`."]
    return "\n".join(lines) + "\n"
