#!/usr/bin/env python3
"""Plain-backprop step time of the small CNN in PyTorch, for comparison with TorchSharp (issue: bench case 3).

Not part of CI. Needs Debian's python3-torch (sudo apt-get install python3-torch) and the Fashion-MNIST
IDX files (default: the Debian package's folder). Builds the same network as NetworkBuilder.SmallCnn
(3x3 convolutions with 32, 64, 128 filters, ReLU, 2x2 max-pooling, linear classifier), trains it with Adam
at batch 128 on the same number of threads, and prints the median step time in milliseconds.

    python3 build/bench_pytorch.py --steps 60 --threads 2
    dotnet run --project src/Samples -c Release -- bench --steps 60 --lr-grid 0.001   # the TorchSharp figure
"""
import argparse, gzip, os, statistics, struct, time

import torch
import torch.nn as nn
import torch.nn.functional as F


def read_idx(path):
    opener = gzip.open if path.endswith('.gz') else open
    with opener(path, 'rb') as f:
        data = f.read()
    rank = data[3]
    dims = struct.unpack('>' + 'I' * rank, data[4:4 + 4 * rank])
    return torch.frombuffer(bytearray(data[4 + 4 * rank:]), dtype=torch.uint8).reshape(dims)


def small_cnn(classes=10):
    layers, channels = [], 1
    for filters in (32, 64, 128):
        layers += [nn.Conv2d(channels, filters, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        channels = filters
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(128 * 3 * 3, classes))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument('--data', default='/usr/share/datasets/fashion-mnist')
    parser.add_argument('--steps', type=int, default=60)
    parser.add_argument('--warmup', type=int, default=5)
    parser.add_argument('--batch-size', type=int, default=128)
    parser.add_argument('--threads', type=int, default=os.cpu_count())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    images = read_idx(os.path.join(args.data, 'train-images-idx3-ubyte.gz')).float().div_(255).unsqueeze(1)
    labels = read_idx(os.path.join(args.data, 'train-labels-idx1-ubyte.gz')).long()
    images = (images - images.mean()) / images.std()
    model = small_cnn()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    times = []
    for step in range(args.warmup + args.steps):
        batch = slice(step * args.batch_size, (step + 1) * args.batch_size)
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images[batch]), labels[batch])
        loss.item()
        loss.backward()
        optimizer.step()
        if step >= args.warmup:
            times.append((time.perf_counter() - start) * 1000)
    print(f'PyTorch {torch.__version__}, {args.threads} threads, batch {args.batch_size}: '
          f'median plain step {statistics.median(times):.1f} ms over {len(times)} steps')


if __name__ == '__main__':
    main()
