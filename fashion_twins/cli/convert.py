"""fashion-twins convert: between the tutorial's torch.save(model.state_dict()) file and the canonical checkpoint.

    fashion-twins convert model_weights.pth model.safetensors
    [convert] wrote model.safetensors (669,706 parameters, output activation none) from model_weights.pth
    fashion-twins convert runs/flax.safetensors model_weights.pth   # back to the tutorial's format

OUT's extension says the format: .safetensors, the canonical checkpoint both twins read; .pth or .pt,
the tutorial's own (a plain state_dict of torch tensors written by torch.save, which
torch.load(..., weights_only=True) reads and the tutorial's class loads with load_state_dict). A
.pth file is read with torch.load(weights_only=True), torch's restricted unpickler: a file holding
anything but tensors is refused, never executed. Only a .pth side needs torch.
"""

from __future__ import annotations

from pathlib import Path

from . import common

# OUT's extension -> the format written.
TORCH_SUFFIXES = (".pth", ".pt")
CANONICAL_SUFFIX = ".safetensors"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="the tutorial's model_weights.pth <-> the canonical .safetensors checkpoint",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
    )
    p.add_argument(
        "source",
        metavar="IN",
        help="a torch.save'd state_dict (.pth/.pt), or a safetensors checkpoint (any twin's, or one without a spec)",
    )
    p.add_argument(
        "dest",
        metavar="OUT",
        help="the file to write: OUT.safetensors (the canonical checkpoint) or OUT.pth/.pt (the tutorial's "
        "torch.save'd state_dict) (required)",
    )
    p.add_argument(
        "--output-activation",
        choices=common.OUTPUT_ACTIVATIONS,
        default=None,
        help=(
            "whether the model ends with the 'Define the Class' cell's final ReLU, for an IN whose header does not "
            "say; written into a .safetensors OUT's header (a .pth holds no spec) (default: IN's header, else none)"
        ),
    )
    p.set_defaults(run=run)


def out_format(dest) -> str:
    """ "safetensors" or "pth" by OUT's extension; any other is a usage error naming the two formats."""
    suffix = Path(dest).suffix.lower()
    if suffix == CANONICAL_SUFFIX:
        return "safetensors"
    if suffix in TORCH_SUFFIXES:
        return "pth"
    raise common.UsageError(
        f"argument OUT: {dest} has extension {suffix or '(none)'!r}; write .safetensors (the canonical checkpoint) "
        "or .pth/.pt (the tutorial's torch.save'd state_dict)"
    )


def run(args) -> int:
    import dataclasses

    from fashion_common import checkpoint as canonical
    from fashion_common.paths import check_input_file, check_no_aliases, check_output_file
    from fashion_common.spec import DEFAULT_SPEC

    kind = out_format(args.dest)
    check_input_file(args.source, "IN")
    check_no_aliases({"OUT": args.dest}, {"IN": args.source})
    check_output_file(args.dest, "OUT")
    if canonical.is_torch_pickle(args.source):
        from fashion_torch.pth import read_pth  # torch: only for a .pth side

        chosen = args.output_activation or "none"  # a .pth holds no spec: the flag says, default none
        spec = dataclasses.replace(DEFAULT_SPEC, output_activation=None if chosen == "none" else chosen)
        state = read_pth(args.source)
        canonical.validate_state(state, spec, source=str(args.source))  # keys and shapes, naming the key at fault
    else:
        spec, _ = common.checkpoint_spec(args.source, args.output_activation)  # None: the header's own spec
        state, spec = canonical.read_state(args.source, spec)
    activation = spec.output_activation or "none"
    if kind == "pth":
        from fashion_torch.pth import write_pth

        write_pth(args.dest, {key: state[key] for key in canonical.checkpoint_shapes(spec)})  # the tutorial's order
        what = "the tutorial's state_dict: torch.load(..., weights_only=True)"
        if activation != "none":  # the spec is lost: loading it back must be told
            what += f"; it holds no spec, so load it with --output-activation {activation}"
    else:
        canonical.write_state(args.dest, state, spec)
        what = f"output activation {activation}"
    print(f"[convert] wrote {args.dest} ({spec.num_parameters():,} parameters, {what}) from {args.source}")
    return 0
