"""eval/bench_run.py, the phases and saving of the GPU benchmarks: a failing phase is recorded and the
run goes on, the results are saved after every phase, a spent budget skips a phase."""

import json

from eval.bench_run import run_phase, save_results


class Spent:
    def left(self) -> bool:
        return False


def test_phases_record_values_and_failures_and_save_after_each(tmp_path):
    results, logged = {"device": "cpu"}, []

    def save():
        save_results(tmp_path, results, markdown=lambda r: f"# {sorted(r)}\n", figure=lambda r, p: p.write_text("png"))
        logged.append(("saved", json.loads((tmp_path / "bench.json").read_text())))

    def fails():
        raise RuntimeError("CUDA error: an illegal memory access")

    run_phase("first", lambda: {"ms": 1.5}, results=results, save=save, log=logged.append)
    run_phase("second", fails, results=results, save=save, log=logged.append)
    run_phase("third", lambda: results.update(filled=True), results=results, save=save, log=logged.append, keep=False)
    run_phase("fourth", lambda: 1, results=results, save=save, log=logged.append, budget=Spent())
    assert results["first"] == {"ms": 1.5} and results["filled"] and "third" not in results
    assert "second" not in results and "RuntimeError: CUDA error" in results["errors"]["second"]
    assert "fourth" not in results and "budget spent: skipping fourth" in logged
    assert any(isinstance(m, str) and m.startswith("second FAILED:\nTraceback") for m in logged)
    saved = [r for m in logged if isinstance(m, tuple) for r in m[1:]]
    assert [sorted(r) for r in saved] == [
        ["device", "first"],
        ["device", "errors", "first"],
        ["device", "errors", "filled", "first"],
    ]  # after each phase that ran, with what it had so far
    assert (tmp_path / "bench.md").read_text() == "# ['device', 'errors', 'filled', 'first']\n"
    assert (tmp_path / "bench.png").read_text() == "png"
