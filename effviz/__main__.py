"""``python -m effviz COMMAND``: the library from the command line.

  list      the models ready here and the official releases (``--json`` for scripts)
  predict   one model on an image and/or a sound file: the top classes
  eval      re-measure a trained model's card numbers from its weights
  import    an official checkpoint (a file on this machine or a Hub repo) into weights/
  inspect   a model's token-mixing matrices and relevance maps on one input
  transcribe  stream a recording through the digit transcribers: digits as they are said
  bench     kernel tables, scaling sweeps and figures (``python -m effviz bench --help``)
  train     train a bundled model (``python -m effviz train --help``)
  serve     launch the web app

Exit codes: 0 success, 1 the input or model could not be used (the message says why), 2 a
usage error.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_OK, EXIT_BAD_INPUT = 0, 1


def _list(args: argparse.Namespace) -> int:
    from . import api

    ready = api.list_models(args.task)
    rows = [{"id": m, "kind": "official" if m in api.list_releases() else "bundled", "ready": True} for m in ready]
    rows += [{"id": name, "kind": "official", "ready": False, "download_mb": r.size_mb, "repo": r.repo_id}
             for name, r in api.list_releases(args.task).items() if name not in ready]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    for row in rows:
        note = "" if row["ready"] else f"  (official: ~{row['download_mb']} MB from {row['repo']} on first use)"
        print(f"{row['id']}{note}")
    return EXIT_OK


def _predict(args: argparse.Namespace) -> int:
    from . import api

    image, audio = args.image, args.audio
    if args.input is not None:  # the positional file goes to the model's only modality
        cfg_modalities = api.load_model(args.model).config.modalities
        if len(cfg_modalities) > 1:
            raise ValueError(f"{args.model} takes an image and a sound: give them with --image and --audio")
        if cfg_modalities[0] == "image":
            image = args.input
        else:
            audio = args.input
    for path in (image, audio):
        if path is not None and not Path(path).is_file():
            raise FileNotFoundError(f"no such file: {path}")
    probabilities = api.predict(args.model, image=image and Path(image), audio=audio and Path(audio), top_k=args.top_k)
    if args.json:
        print(json.dumps({"model": args.model, "top": probabilities}, indent=2))
    else:
        for label, p in probabilities.items():
            print(f"{p:8.4f}  {label}")
    return EXIT_OK


def _eval(args: argparse.Namespace) -> int:
    from .train import data_files, evaluate_saved

    results = evaluate_saved(args.model, data_files(args.data))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for name, r in results.items():
            card = "—" if r["card"] is None else f"{r['card']:.4f}"
            print(f"{name:20s} card {card}  measured {r['measured']:.4f}")
    return EXIT_OK


def _transcribe(args: argparse.Namespace) -> int:
    from . import streaming

    if not Path(args.input).is_file():
        raise FileNotFoundError(f"no such file: {args.input}")
    models = args.model or streaming.list_transcribers()
    if not models:
        raise ValueError("no transcriber is saved here (weights/transcribers/): train one with "
                         "python -m effviz.train_transcriber")
    results = []
    for model_id in models:
        compute, reports = 0.0, []
        for report in streaming.stream_recording(model_id, Path(args.input), chunk_seconds=args.chunk_seconds):
            compute += report.compute_seconds
            reports.append(report)
            if not args.json:
                for digit in report.digits:
                    print(f"{model_id}: {digit.label} at {digit.seconds:.2f} s", flush=True)
        seconds = reports[-1].seconds_streamed
        digits = [d for r in reports for d in r.digits]
        results.append({"model": model_id, "transcript": streaming.digits_text(digits),
                        "digits": [{"label": d.label, "seconds": d.seconds} for d in digits],
                        "seconds": round(seconds, 3), "real_time_factor": round(compute / seconds, 4),
                        "state_bytes": reports[-1].state_bytes})
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        for r in results:
            print(f"{r['model']}: {r['transcript'] or '(no digit)'}  (real-time factor {r['real_time_factor']:.3f}, "
                  f"state {r['state_bytes']:,} bytes)")
    return EXIT_OK


def _serve(args: argparse.Namespace) -> int:
    from .ui.app import launch

    launch(args.host, args.port)
    return EXIT_OK


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # These commands have their own parsers: everything after the name is theirs.
    if argv and argv[0] in ("bench", "train", "import", "inspect"):
        command, rest = argv[0], argv[1:]
        if command == "inspect":
            from .inspect import main as inspect_main

            return inspect_main(rest)
        if command == "bench":
            from .bench.__main__ import main as bench_main

            return bench_main(rest)
        if command == "train":
            from .train import main as train_main

            train_main(rest)
            return EXIT_OK
        from .convert.__main__ import main as import_main

        return import_main(rest)

    parser = argparse.ArgumentParser(prog="python -m effviz", description="effviz from the command line",
                                     epilog=__doc__.split("\n\n")[2], formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in ("bench", "train", "import", "inspect"):  # listed for --help; parsed above
        commands.add_parser(name, help=f"see python -m effviz {name} --help", add_help=False)

    listing = commands.add_parser("list", help="models ready here and official releases")
    listing.add_argument("--task", choices=("image", "audio", "audio-visual"))
    listing.add_argument("--json", action="store_true", help="machine-readable output")
    listing.set_defaults(run=_list)

    predict = commands.add_parser("predict", help="top classes of one model on a file")
    predict.add_argument("input", nargs="?", help="image or sound file (the model's only input)")
    predict.add_argument("--model", required=True, help="model id (python -m effviz list)")
    predict.add_argument("--image", help="image file (audio-visual models)")
    predict.add_argument("--audio", help="sound file (audio-visual models)")
    predict.add_argument("--top-k", type=int, default=5)
    predict.add_argument("--json", action="store_true")
    predict.set_defaults(run=_predict)

    evaluate = commands.add_parser("eval", help="re-measure a trained model's card numbers")
    evaluate.add_argument("model")
    evaluate.add_argument("--data", default="../shared/data", help="folder of the training data files")
    evaluate.add_argument("--json", action="store_true")
    evaluate.set_defaults(run=_eval)

    transcribe = commands.add_parser("transcribe", help="stream a recording through the digit transcribers")
    transcribe.add_argument("input", help="sound file")
    transcribe.add_argument("--model", action="append", help="transcriber id (repeatable; default: all saved)")
    transcribe.add_argument("--chunk-seconds", type=float, default=0.16, help="audio handed over at a time")
    transcribe.add_argument("--json", action="store_true")
    transcribe.set_defaults(run=_transcribe)

    serve = commands.add_parser("serve", help="launch the web app")
    serve.add_argument("--host", help="address to listen on (default $GRADIO_SERVER_NAME or 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port (default $GRADIO_SERVER_PORT or 7860)")
    serve.set_defaults(run=_serve)

    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
