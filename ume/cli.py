"""`ume` command line: thin dispatch to the modules that do the work.

Examples:
    ume data synth --preset quick --out data/quick
    ume data fbank --model runs/dense data/quick/train data/quick/dev
    ume train --config configs/quick.yaml --train data/quick/train --dev data/quick/dev --exp runs/dense
    ume decode --model runs/dense --data data/quick/test --mode attention_rescoring --out hyp.txt
    ume score --ref data/quick/test/text --hyp hyp.txt [--vs baseline_hyp.txt] [--json]
    ume score --ref data/test/text --hyp s1/hyp.txt --hyp s2/hyp.txt --vs b1/hyp.txt --vs b2/hyp.txt
    ume bench rtf --model runs/dense --data data/quick/test
    ume bench moe --quick
    ume export --model runs/ume --out encoder.onnx --check
    ume import --format wenet wenet_exp/ --out runs/wenet
    ume export --model runs/wenet_moe --format wenet --out wenet_moe/
    ume demo --preset quick --workdir work
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable
from pathlib import Path

from ume.config import experiment_presets, load_config, preset_config
from ume.data.synth_presets import PRESETS as SYNTH_PRESETS  # dataclasses only: cheap

DECODE_MODES = ["ctc_greedy", "ctc_prefix_beam", "attention", "attention_rescoring"]


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def cmd_synth(args: argparse.Namespace) -> int:
    from ume.data.synth import synthesize

    try:
        summary = synthesize(args.preset, args.out, seed=args.seed, num_workers=args.workers)
    except RuntimeError as e:  # too many utterances failed to render
        print(f"ume data synth: error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    return 0


def _positive_int(text: str) -> int:
    n = int(text)
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def cmd_fbank(args: argparse.Namespace) -> int:
    """Write the fbank cache that `ume train` / `ume experiment` read, once, before several runs
    share it (two runs that start together would each compute it)."""
    import time

    from ume.data.loader import FeatureStore

    feats = load_config(_resolve_config(args)).features
    for d in args.data:
        cache = Path(args.cache_dir) if args.cache_dir else Path(d).parent / ".cache"
        t0 = time.time()
        store = FeatureStore.from_data_dir(
            d, feats, cache, progress=not args.no_progress, workers=args.workers
        )
        frames = sum(store.lengths)
        row = {"data": d, "cache_dir": str(cache), "utts": len(store), "frames": frames}
        row["skipped"] = len(store.skipped)
        row["cache_mb"] = round(frames * feats.num_mel_bins * 2 / 2**20, 1)  # float16
        row["seconds"] = round(time.time() - t0, 1)
        row["workers"] = args.workers
        print(json.dumps(row))
    return 0


class _LazyArgs(argparse.ArgumentParser):
    """A subcommand parser whose arguments come from `add_args` ("module:function"), imported
    on first use (parsing this subcommand or printing its help). Building the `ume` parser thus
    imports no implementation module, and `ume --help` imports no torch."""

    def __init__(self, *args, add_args: str | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._add_args = add_args

    def _populate(self) -> None:
        if self._add_args:
            import importlib

            module, func = self._add_args.split(":")
            self._add_args = None
            getattr(importlib.import_module(module), func)(self)

    def parse_known_args(self, args=None, namespace=None):  # noqa: ANN001, ANN201
        self._populate()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self._populate()
        return super().format_help()

    def format_usage(self) -> str:
        self._populate()
        return super().format_usage()


def _lazy(module: str, func: str) -> Callable[[argparse.Namespace], int]:
    """A command handler that imports `module` only when the command runs (fast `ume --help`)."""

    def run(args: argparse.Namespace) -> int:
        import importlib

        return getattr(importlib.import_module(module), func)(args)

    return run


def _deferred(
    group: argparse._SubParsersAction,
    name: str,
    help: str,  # noqa: A002 - argparse's own name
    module: str,
    add_args: str,
    run: str | Callable[[argparse.Namespace], int],
) -> None:
    """A subcommand `name` of `group` whose arguments come from `module`.`add_args` and whose
    handler is `module`.`run` (or the callable `run`), both imported on first use."""
    p = group.add_parser(name, help=help, add_args=f"{module}:{add_args}")
    p.set_defaults(func=_lazy(module, run) if isinstance(run, str) else run)


def _resolve_config(args: argparse.Namespace) -> Path:
    if args.config:
        return Path(args.config)
    if args.init:
        return Path(args.init) / "config.yaml"
    return preset_config(args.preset)


def cmd_train(args: argparse.Namespace) -> int:
    from ume.train.distributed import teardown_distributed
    from ume.train.trainer import Trainer

    cfg = load_config(_resolve_config(args), args.set)
    trainer = Trainer(
        cfg,
        args.exp,
        args.train,
        args.dev,
        init_dir=args.init,
        cache_dir=args.cache_dir,
        progress=not args.no_progress,
        device=args.device,
    )
    info = trainer.run()
    teardown_distributed()  # after success only: a failed rank must not wait in a barrier
    if info:
        print(json.dumps({k: v for k, v in info.items() if k != "curve"}, indent=2))
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    """`ume export --format onnx` (default) or `--format wenet` (a WeNet model dir)."""
    if getattr(args, "format", "onnx") == "wenet":
        return _lazy("ume.interop.wenet", "main_export_wenet")(args)
    return _lazy("ume.decode.export", "main_export")(args)


def cmd_score(args: argparse.Namespace) -> int:
    from ume.decode.score import main_score

    return main_score(args.ref, args.hyp, args.json, vs=args.vs, replicates=args.bootstrap)


def add_device_arg(p: argparse.ArgumentParser, default: str = "auto") -> None:
    """--device {cpu,cuda,auto} (resolved by ume.device; kept torch-free for `ume --help`)."""
    p.add_argument(
        "--device",
        default=default,
        choices=["cpu", "cuda", "auto"],
        help=f"where to run (auto: CUDA if available, else CPU; default {default})",
    )


def add_decode_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--beam", type=int, default=10)
    p.add_argument(
        "--chunk-size", type=int, default=0, help="streaming chunk (encoder frames); 0 = full"
    )
    p.add_argument("--left-chunks", type=int, default=-1, help="left chunks seen; -1 = all")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="ume", description=__doc__.split("\n")[0])
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True, parser_class=_LazyArgs)

    data = sub.add_parser("data", help="corpus tools").add_subparsers(
        dest="data_cmd", required=True
    )
    p = data.add_parser("synth", help="synthesise the embedded bilingual corpus (offline)")
    p.add_argument(
        "--preset",
        default="quick",
        choices=list(SYNTH_PRESETS),
    )
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=cmd_synth)
    p = data.add_parser(
        "fbank", help="precompute the fbank cache of data dirs (shared by runs started together)"
    )
    p.add_argument("data", nargs="+", help="Kaldi data dirs (wav.scp + text)")
    p.add_argument(
        "--model", dest="init", help="experiment/model dir whose config.yaml gives the features"
    )
    p.add_argument("--config", help="YAML config giving the features (instead of --model)")
    p.add_argument("--preset", default="quick", help="preset config when neither is given")
    p.add_argument(
        "--cache-dir", help="default: <data dir>/../.cache, where `ume experiment` looks"
    )
    p.add_argument(
        "--workers",
        type=_positive_int,
        default=os.cpu_count() or 1,
        help="processes computing fbank (default: every core); the cache is the same bytes",
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_fbank)

    p = sub.add_parser("train", help="train (or fine-tune with --init) a model")
    p.add_argument("--config", help="YAML config (default: the preset, or --init's config)")
    p.add_argument("--preset", default="quick")
    p.add_argument("--init", help="experiment dir to start from (tokenizer, CMVN, weights)")
    p.add_argument("--train", required=True, help="Kaldi dir or data.list")
    p.add_argument("--dev", help="Kaldi dir or data.list for the dev curve")
    p.add_argument("--exp", required=True, help="experiment dir (resumes if it has checkpoints)")
    p.add_argument("--cache-dir", help="where to cache fbank features")
    p.add_argument("--set", action="append", default=[], help="override, e.g. train.lr=1e-3")
    p.add_argument("--no-progress", action="store_true")
    add_device_arg(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("decode", help="decode a data dir into a Kaldi-style hypothesis file")
    p.add_argument("--model", required=True, help="experiment dir")
    p.add_argument("--data", required=True, help="Kaldi dir or data.list")
    p.add_argument("--mode", default="attention_rescoring", choices=DECODE_MODES)
    p.add_argument("--out", required=True, help="hypothesis file (utt-id text)")
    p.add_argument("--batch-size", type=int, default=16)
    add_decode_args(p)
    add_device_arg(p)
    p.set_defaults(func=_lazy("ume.decode.cli", "run_decode"))

    p = sub.add_parser("transcribe", help="audio files (or PCM on stdin) -> FILE<TAB>text")
    p.add_argument("files", nargs="+", metavar="FILE", help="audio files; - = PCM on stdin")
    p.add_argument("--model", help="experiment dir (default: the bundled model)")
    p.add_argument("--mode", default="attention_rescoring", choices=DECODE_MODES)
    p.add_argument("--json", action="store_true", help="JSON lines with per-token CTC times")
    p.add_argument(
        "--stream", action="store_true", help="chunk-by-chunk with caches; partials on stderr"
    )
    p.add_argument("--rate", type=int, default=16000, help="sample rate of '-' (s16le mono PCM)")
    p.add_argument(
        "--max-segment",
        type=float,
        default=20.0,
        help="seconds: longer audio is cut at pauses into segments of at most this length, "
        "each decoded on its own (bounded memory); 0 = decode whole",
    )
    p.add_argument(
        "--endpoint-silence",
        type=float,
        default=1.0,
        help="--stream: seconds of silence after speech that end an utterance (a line of "
        "output; the decoder then starts afresh); 0 = off",
    )
    p.add_argument(
        "--max-utterance",
        type=float,
        default=20.0,
        help="--stream: seconds after which an utterance ends without a pause; 0 = off (with "
        "--endpoint-silence 0 the whole stream is one utterance, and memory grows with it)",
    )
    add_decode_args(p)
    add_device_arg(p)
    p.set_defaults(func=_lazy("ume.decode.transcribe", "main_transcribe"))

    p = sub.add_parser("score", help="CER (zh) / WER (en) / MER")
    p.add_argument("--ref", required=True)
    p.add_argument(
        "--hyp",
        required=True,
        action="append",
        help="hypotheses to score; repeat for several training runs (seeds) of one system",
    )
    p.add_argument(
        "--vs",
        action="append",
        help="a baseline's hypotheses: adds a paired-bootstrap comparison of --hyp to it; "
        "repeat for several baseline runs (the bootstrap then also draws the runs)",
    )
    p.add_argument("--bootstrap", type=int, default=1000, help="replicates for --vs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_score)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(
        dest="bench_cmd", required=True
    )
    p = bench.add_parser("rtf", help="real-time factor at batch 1 and 16")
    p.add_argument("--model", required=True)
    p.add_argument("--vs", help="a second experiment dir measured in the same run")
    p.add_argument("--data", required=True)
    p.add_argument("--mode", default="ctc_greedy")
    p.add_argument("--max-utts", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--chunk-size", type=int, default=0)
    p.add_argument("--stream-chunk", type=int, default=16, help="also streaming RTF; 0 = off")
    p.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="alternating measurements of --model and --vs; RTFs are medians over rounds",
    )
    p.add_argument(
        "--onnx",
        action="store_true",
        help="also export both models and time them in onnxruntime (batch 1, full + streaming)",
    )
    p.add_argument(
        "--onnx-moe-op", choices=("portable", "fused"), default="portable",
        help="--onnx: how MoE layers are exported (ume export --moe-op)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true")
    add_device_arg(p, default="cpu")  # CPU figures stay comparable unless a GPU is asked for
    p.set_defaults(func=_lazy("ume.bench.rtf", "main_rtf"))

    # the commands below define their arguments in their own modules (loaded on first use)
    _deferred(
        bench,
        "moe",
        "MoE dispatch vs FLOP bound, loop and HF references",
        "ume.bench.moe",
        "add_moe_args",
        "main_moe",
    )
    _deferred(
        bench,
        "onnx",
        "onnxruntime RTF of exported graphs: MoE (fused / portable, int8) vs dense",
        "ume.bench.onnx_rtf",
        "add_onnx_args",
        "main_onnx",
    )
    _deferred(
        bench,
        "train",
        "training steps/s: dense vs UME frozen vs unfrozen",
        "ume.bench.train_speed",
        "add_train_args",
        "main_train_bench",
    )
    _deferred(
        bench,
        "compile",
        "torch.compile vs eager encoder latency",
        "ume.bench.compile",
        "add_compile_args",
        "main_compile",
    )
    _deferred(
        bench,
        "symmetry",
        "do upcycled experts specialise? controlled capacity-bound probe",
        "ume.bench.symmetry",
        "add_symmetry_args",
        "main_symmetry",
    )
    _deferred(
        bench,
        "gap",
        "MoE vs dense encoder time split: FLOPs, weights, overhead",
        "ume.bench.gap",
        "add_gap_args",
        "main_gap",
    )

    _deferred(
        bench,
        "longaudio",
        "transcribe a long recording of test utterances: memory, speed, text vs per utterance",
        "ume.bench.long_audio",
        "add_long_audio_args",
        "main_long_audio",
    )
    _deferred(
        bench,
        "stream",
        "a long live stream: per-chunk latency and memory over time",
        "ume.bench.long_stream",
        "add_long_stream_args",
        "main_long_stream",
    )

    _deferred(
        sub,
        "export",
        "ONNX export of encoder + CTC (MoE included), --check; or --format wenet",
        "ume.decode.export",
        "add_export_args",
        cmd_export,
    )

    _deferred(
        sub,
        "import",
        "another toolkit's model dir -> ume experiment dir (--format wenet)",
        "ume.interop.wenet",
        "add_import_args",
        "main_import",
    )

    _deferred(
        sub,
        "upcycle",
        "dense experiment dir -> MoE experiment dir (UME)",
        "ume.upcycle.cli",
        "add_upcycle_args",
        "main_upcycle",
    )

    _deferred(
        sub,
        "inspect",
        "MoE diagnostics: expert load, similarity, heat-map",
        "ume.moe_report",
        "add_inspect_args",
        "main_inspect",
    )

    p = sub.add_parser("experiment", help="the paper's comparison: dense vs UME vs scratch")
    p.add_argument(
        "--preset",
        default="quick",
        choices=experiment_presets(),
    )
    p.add_argument("--workdir", required=True)
    p.add_argument("--from-scratch", action="store_true", help="train the dense model too")
    p.add_argument("--model", help="dense experiment dir to start from (default: bundled)")
    p.add_argument(
        "--runs",
        help="comma list of runs to do (default: the preset's), each a recipe of ume/recipes/; "
        "an upcycling recipe takes modifiers, e.g. ume_kmeans_fast_no_freeze+drop (+noise, "
        "+router_noise, +fine)",
    )
    p.add_argument(
        "--recipe",
        action="append",
        metavar="FILE",
        help="your own run: a recipe YAML file (docs/recipes.md), run under its file name after "
        "--runs (without --runs: dense and the recipes); repeatable",
    )
    p.add_argument(
        "--merge-from",
        action="append",
        metavar="WORKDIR",
        help="first copy in the finished runs of another workdir of the same preset "
        "(runs trained side by side, one per core); repeatable",
    )
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="change one key of the preset's plan (configs/experiment_PRESET.yaml), e.g. "
        "--set fast_lr_scale_no_freeze=6; repeatable; recorded in results.json",
    )
    p.set_defaults(func=_lazy("ume.experiment.runner", "main_experiment"))

    _deferred(
        bench,
        "step",
        "training-step cost of model/precision variants",
        "ume.bench.step",
        "add_step_args",
        "main_step",
    )

    p = sub.add_parser("demo", help="synthesise, upcycle, train, decode, score: the README demo")
    p.add_argument("--preset", default="quick", choices=["tiny", "quick", "paper"])
    p.add_argument("--workdir", required=True)
    p.add_argument(
        "--from-scratch", action="store_true", help="train the dense model, not the bundled one"
    )
    p.add_argument("--model", help="dense experiment dir to start from (default: bundled)")
    p.add_argument(
        "--trio-utts",
        type=int,
        help="utterances per xl test split for the shipped dense / dense_continued / UME trio"
        " (0: skip it; default: ume.experiment.demo.TRIO_UTTS)",
    )
    p.set_defaults(func=_lazy("ume.experiment.demo", "run_demo"))
    return ap


def main(argv: list[str] | None = None) -> int:
    """Run one `ume` command. An error of the user's input (`UmeError`, or a file that does not
    exist) is one line on stderr, exit status 2. A ValueError from elsewhere (torch, numpy, or a
    check not yet marked as ume's) may be a bug: its traceback is printed before that line. Any
    other exception propagates with its traceback."""
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from ume.errors import UmeError

    try:
        return int(args.func(args) or 0)
    except (UmeError, FileNotFoundError) as e:
        print(f"ume {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except ValueError as e:
        traceback.print_exc()
        print(f"ume {args.cmd}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
