"""`python -m grpose fit|validate|test|predict --config ...` (LightningCLI, omegaconf mode)."""
from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from grpose.callbacks.images import GenerationWriter


class GRPoseCLI(LightningCLI):
    """LightningCLI with any `LightningModule` / `LightningDataModule` chosen by `class_path`.

    `predict` writes the generated images with `GenerationWriter` (`--predict_writer.out_dir`).
    """

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(GenerationWriter, "predict_writer")
        parser.set_defaults({"predict_writer.out_dir": "runs/predict"})


def main(args=None, run: bool = True) -> GRPoseCLI:
    return GRPoseCLI(subclass_mode_model=True, subclass_mode_data=True,
                     parser_kwargs={"parser_mode": "omegaconf"},
                     save_config_kwargs={"overwrite": True}, args=args, run=run)
