"""Fit an :class:`~nfn_ext.AccuracyPredictor` on a transformer zoo and save it.

``python -m nfn_ext.transformer_train --zoo zoo/vit --out predictor.pt`` trains Transformer-NFN (binary
cross-entropy and/or a pairwise ranking loss, ``--loss``) on the test accuracy of every checkpoint of a zoo
from ``python -m nfn_ext.zoo build --arch transformer``; then

    predictor = AccuracyPredictor.load("predictor.pt")
    predictor.predict([hf_vit, timm_vit, torch_encoder])   # tensor of predicted accuracies

scores any models that ``TransformerWeightSpace.from_module`` reads and whose blocks have the zoo's shape
(with ``--io``, the zoo's ``SmallViT`` only: it also reads their embedding and classifier weights).
"""

from __future__ import annotations

import argparse
import time

import torch

from .transformer_predictor import LOSSES, AccuracyPredictor


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m nfn_ext.transformer_train",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--zoo", required=True, help="zoo from `python -m nfn_ext.zoo build --arch transformer`"
    )
    parser.add_argument("--out", required=True, help="where to save the predictor (.pt)")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--weight-decay", type=float, default=0.0)
    parser.add_argument("--loss", choices=LOSSES, default="bce", help="bce, pairwise ranking, or their sum")
    parser.add_argument(
        "--io", action="store_true", help="also read the embedding and classifier (SmallViT models only)"
    )
    parser.add_argument("--channels", type=int, nargs="+", default=[8])
    parser.add_argument("--head-hidden", type=int, default=64)
    parser.add_argument(
        "--attention-to-mlp", action="store_true", help="add the attention -> MLP terms to the layer"
    )
    parser.add_argument(
        "--raw-features",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="the head also reads the quantile-normalised invariant pool of the input weights",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--val-fraction", type=float, default=0.1, help="members held out for early stopping (0: none)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    predictor = AccuracyPredictor.fit(
        args.zoo, args.epochs, args.batch_size, args.lr, args.seed, args.val_fraction,
        io=args.io, loss=args.loss, weight_decay=args.weight_decay, hidden_channels=args.channels,
        head_hidden=args.head_hidden, attention_to_mlp=args.attention_to_mlp,
        raw_features=args.raw_features,
    )  # fmt: skip
    predictor.save(args.out)
    print(f"saved {args.out} ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
