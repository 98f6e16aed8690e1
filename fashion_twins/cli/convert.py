"""fashion-twins convert: the tutorial's torch.save(model.state_dict()) file (or a spec-less safetensors file)
-> the canonical checkpoint.

    fashion-twins convert model_weights.pth model.safetensors
    [convert] wrote model.safetensors (669,706 parameters, output activation none) from model_weights.pth

The .pth file is read with torch.load(weights_only=True), torch's restricted unpickler: a file
holding anything but tensors is refused, never executed. Needs torch; the output is read by both twins.
"""

from __future__ import annotations

from . import common


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "convert",
        help="the tutorial's model_weights.pth -> the canonical .safetensors checkpoint",
        description=__doc__.split("\n\n")[0].split(": ", 1)[1],
    )
    p.add_argument(
        "source", metavar="IN", help="a torch.save'd state_dict (.pth/.pt), or a safetensors file without a spec"
    )
    p.add_argument("dest", metavar="OUT.safetensors", help="the canonical checkpoint to write (required)")
    p.add_argument(
        "--output-activation",
        choices=common.OUTPUT_ACTIVATIONS,
        default="none",
        help=(
            "whether the saved model ends with the 'Define the Class' cell's ReLU; written into OUT's header "
            "(default: none)"
        ),
    )
    p.set_defaults(run=run)


def run(args) -> int:
    import dataclasses

    from fashion_common import checkpoint as canonical
    from fashion_common.paths import check_input_file, check_no_aliases, check_output_file
    from fashion_common.spec import DEFAULT_SPEC

    check_input_file(args.source, "IN")
    check_no_aliases({"OUT": args.dest}, {"IN": args.source})
    check_output_file(args.dest, "OUT")
    spec = dataclasses.replace(
        DEFAULT_SPEC, output_activation=None if args.output_activation == "none" else args.output_activation
    )

    from fashion_common.checkpoint import is_torch_pickle
    from fashion_torch.pth import read_pth

    if is_torch_pickle(args.source):
        state = read_pth(args.source)
        canonical.validate_state(state, spec, source=str(args.source))  # keys and shapes, naming the key at fault
    else:
        state, _ = canonical.read_state(args.source, spec)
    canonical.write_state(args.dest, state, spec)
    print(
        f"[convert] wrote {args.dest} ({spec.num_parameters():,} parameters, output activation "
        f"{args.output_activation}) from {args.source}"
    )
    return 0
