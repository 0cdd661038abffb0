"""Reading a run's metrics.json in tests: its subjects' results without the wall-clock timings, which differ
between any two runs (so that equal results compare equal, and different ones differ by more than time)."""
TIMING_KEYS = ("seconds", "refine_s")


def subject_results(metrics: dict) -> dict:
    return {subject: {k: v for k, v in result.items() if k not in TIMING_KEYS}
            for subject, result in metrics["subjects"].items()}
