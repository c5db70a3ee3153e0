"""The seed's model in PyTorch: training-step and encoder timings to set beside `cargo xtask bench`.

Not run by CI. Install PyTorch (`pip install torch`) and run
`python3 crates/bench/pytorch_step.py [--threads 2] [--bf16]`; it prints the median
(and spread) of 7 timed steps after 2 warm-ups at batch 128 and 32, and the encoder at batch 500,
on the first MNIST training images of `--mnist DIR` (random pixels without it), in the line
format of `cargo xtask bench` (which runs it interleaved with its own step under
`cargo xtask bench --pytorch PYTHON`). `--bf16` runs the forward pass and
the loss under `torch.autocast("cpu", dtype=torch.bfloat16)` (f32 master weights). With
`--mnist DIR` it also times one bare training loop over the first `--pass-images` MNIST
training images at batch 128 (the images already in memory), to set beside a whole
`vae-train` process on the same images. `--weights MODEL.safetensors` starts from a
trained model (a `vae-train` output, same tensor names; needs the `safetensors` package)
instead of PyTorch's initialisation.
"""

import contextlib

import argparse
import gzip
import os
import statistics
import struct
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Vae(nn.Module):
    def __init__(self, latent=10):
        super().__init__()
        self.enc = nn.ModuleDict(
            dict(
                conv1=nn.Conv2d(1, 16, 3),
                conv2=nn.Conv2d(16, 32, 3),
                linear=nn.Linear(18432, 512),
                linear2=nn.Linear(512, 256),
                mu=nn.Linear(256, latent),
                var=nn.Linear(256, latent),
            )
        )
        self.dec = nn.ModuleDict(
            dict(
                linear=nn.Linear(latent, 256),
                linear2=nn.Linear(256, 512),
                linear3=nn.Linear(512, 18432),
                deconv1=nn.ConvTranspose2d(32, 16, 3),
                deconv2=nn.ConvTranspose2d(16, 1, 3),
            )
        )

    def encode(self, x):
        e = self.enc
        h = F.relu(e.conv2(F.relu(e.conv1(x)))).flatten(1)
        h = F.relu(e.linear2(F.relu(e.linear(h))))
        return e.mu(h), e.var(h)

    def forward(self, x):
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        d = self.dec
        h = F.relu(d.linear3(F.relu(d.linear2(F.relu(d.linear(z))))))
        h = F.relu(d.deconv1(h.view(-1, 32, 24, 24)))
        return d.deconv2(h), mu, logvar


def mnist_images(directory, n):
    """The first n training images of an MNIST directory, (n, 1, 28, 28) in [0, 1]."""
    with gzip.open(os.path.join(directory, "train-images-idx3-ubyte.gz")) as f:
        magic, count, rows, cols = struct.unpack(">IIII", f.read(16))
        if magic != 2051 or (rows, cols) != (28, 28):
            raise SystemExit(f"{directory}: not an IDX file of 28x28 images (magic {magic}, {rows}x{cols})")
        n = min(n, count)
        pixels = bytearray(f.read(n * rows * cols))
    return torch.frombuffer(pixels, dtype=torch.uint8).float().div(255).view(n, 1, rows, cols)


def timed(fn, reps=7, warmup=2):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), min(times), max(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for the forward pass and the loss")
    parser.add_argument("--mnist", help="MNIST directory: the step and the encoder run on its first training images "
                        "(random pixels without it), and one training loop over its first --pass-images is timed")
    parser.add_argument("--pass-images", type=int, default=6400, help="images of that loop")
    parser.add_argument("--weights", help="a vae-train model.safetensors to start from")
    args = parser.parse_args()
    autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if args.bf16 else contextlib.nullcontext
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Vae()
    if args.weights:
        from safetensors.torch import load_file

        model.load_state_dict(load_file(args.weights))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads{', bf16 autocast' if args.bf16 else ''}")

    def step(x):
        batch = len(x)
        opt.zero_grad()
        with autocast():
            logits, mu, logvar = model(x)
            bce = F.binary_cross_entropy_with_logits(logits, x, reduction="sum")
            kl = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
        ((bce + kl) / batch).backward()
        opt.step()

    first = mnist_images(args.mnist, 500) if args.mnist else torch.rand(500, 1, 28, 28)
    for batch in (128, 32):
        x = first[:batch]
        med, lo, hi = timed(lambda: step(x))
        print(f"training step, batch {batch:3}: {med * 1e3:7.1f} ms (spread {lo * 1e3:.1f}-{hi * 1e3:.1f})  "
              f"{batch / med:6.0f} images/s")
    with torch.no_grad(), autocast():
        med, lo, hi = timed(lambda: model.encode(first))
    print(f"encoder, 500 images: {med * 1e3:7.1f} ms (spread {lo * 1e3:.1f}-{hi * 1e3:.1f})  {500 / med:7.0f} images/s")
    if args.mnist:
        images = mnist_images(args.mnist, args.pass_images)
        start = time.perf_counter()
        for i in range(0, len(images), 128):
            step(images[i : i + 128])
        seconds = time.perf_counter() - start
        print(f"training pass, {len(images)} images at batch 128: {seconds * 1e3:7.1f} ms  {len(images) / seconds:6.0f} images/s")


if __name__ == "__main__":
    main()
