"""Build the demo model: a small residual CNN trained on scikit-learn's digits.

Writes to --out-dir (default models/):
  digits_cnn.onnx     opset 17, input `input` [batch,1,8,8], output `logits` [batch,10]
  digits_calib.npz    calibration inputs for quantization (`input`, `labels`)
  digits_test.npz     held-out evaluation inputs (`input`, `labels`)

The export keeps BatchNormalization as separate nodes on purpose: folding
Conv+BN is graphopt's job, so the demo model must still contain them.

Usage: python tools/make_digits_model.py [--out-dir models]
"""

import argparse
import collections
import pathlib

import numpy as np
import onnx
import onnxruntime as ort
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

SEED = 0
TEST_FRACTION = 0.25
CALIB_FRACTION = 0.15
EPOCHS = 30
BATCH_SIZE = 64
OPSET = 17


def load_splits():
    """Digits as float32 N x 1 x 8 x 8 in [0, 1]; stratified train/calib/test split."""
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    labels = digits.target.astype(np.int64)
    rest_x, test_x, rest_y, test_y = train_test_split(
        images, labels, test_size=TEST_FRACTION, random_state=SEED, stratify=labels
    )
    # The calibration share is taken from what remains after the test split.
    train_x, calib_x, train_y, calib_y = train_test_split(
        rest_x,
        rest_y,
        test_size=CALIB_FRACTION / (1 - TEST_FRACTION),
        random_state=SEED,
        stratify=rest_y,
    )
    return (train_x, train_y), (calib_x, calib_y), (test_x, test_y)


def conv_bn(in_channels, out_channels):
    # No conv bias: the following BN has its own shift.
    return [
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
    ]


class ResidualBlock(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.body = nn.Sequential(
            *conv_bn(channels, channels), nn.ReLU(), *conv_bn(channels, channels)
        )
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.body(x) + x)


class DigitsCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn(1, 16),
            nn.ReLU(),
            *conv_bn(16, 32),
            nn.ReLU(),
            nn.MaxPool2d(2),  # 8x8 -> 4x4
            ResidualBlock(32),
            nn.AdaptiveAvgPool2d(1),  # exported as GlobalAveragePool
            nn.Flatten(),
        )
        self.classifier = nn.Linear(32, 10)  # exported as Gemm

    def forward(self, x):
        return self.classifier(self.features(x))


def accuracy(logits, labels):
    return float((np.asarray(logits).argmax(axis=1) == labels).mean())


def torch_logits(model, images):
    with torch.no_grad():
        return model(torch.from_numpy(images)).numpy()


def train(train_x, train_y):
    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    model = DigitsCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, EPOCHS)
    loss_fn = nn.CrossEntropyLoss()
    images, labels = torch.from_numpy(train_x), torch.from_numpy(train_y)
    shuffle = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(EPOCHS):
        order = torch.randperm(len(images), generator=shuffle)
        for start in range(0, len(order), BATCH_SIZE):
            batch = order[start : start + BATCH_SIZE]
            optimizer.zero_grad()
            loss_fn(model(images[batch]), labels[batch]).backward()
            optimizer.step()
        scheduler.step()
    model.eval()
    return model


def export(model, path):
    example = torch.zeros(1, 1, 8, 8)
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
        training=torch.onnx.TrainingMode.EVAL,
        # Constant folding is what runs the Conv+BN fusion peephole; off keeps BN.
        do_constant_folding=False,
    )
    onnx_model = onnx.load(str(path))
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=pathlib.Path, default=pathlib.Path("models"))
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    (train_x, train_y), (calib_x, calib_y), (test_x, test_y) = load_splits()
    print(f"samples: train {len(train_y)}, calibration {len(calib_y)}, test {len(test_y)}")

    model = train(train_x, train_y)
    test_logits = torch_logits(model, test_x)
    torch_test_acc = accuracy(test_logits, test_y)
    print(f"torch train accuracy: {accuracy(torch_logits(model, train_x), train_y):.4f}")
    print(f"torch test accuracy:  {torch_test_acc:.4f}")

    onnx_path = args.out_dir / "digits_cnn.onnx"
    onnx_model = export(model, onnx_path)
    histogram = collections.Counter(node.op_type for node in onnx_model.graph.node)
    if "BatchNormalization" not in histogram:
        raise SystemExit("export fused BatchNormalization; the demo model must keep it")

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    ort_logits = session.run(["logits"], {"input": test_x})[0]
    ort_test_acc = accuracy(ort_logits, test_y)
    print(f"onnxruntime test accuracy: {ort_test_acc:.4f}")
    print(f"max |torch - ort| logit difference: {np.abs(ort_logits - test_logits).max():.2e}")
    if ort_test_acc != torch_test_acc:
        raise SystemExit("onnxruntime and torch disagree on test accuracy")

    print("op histogram:")
    for op_type, count in sorted(histogram.items()):
        print(f"  {op_type:<20} {count}")

    # Compressed: these files are committed to the repository.
    np.savez_compressed(args.out_dir / "digits_calib.npz", input=calib_x, labels=calib_y)
    np.savez_compressed(args.out_dir / "digits_test.npz", input=test_x, labels=test_y)
    for name in ("digits_cnn.onnx", "digits_calib.npz", "digits_test.npz"):
        print(f"wrote {args.out_dir / name} ({(args.out_dir / name).stat().st_size} bytes)")


if __name__ == "__main__":
    main()
