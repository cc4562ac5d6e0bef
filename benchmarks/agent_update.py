"""Gradient updates per second of the whole agent, for every trajectory encoder.

One update = the agent's loss (online + target encoders, actor, critic ensemble, all
gammas) + backward + gradient clipping + Adam step + Polyak target update: what the
training loop does per batch. Vector observations (16-d), 4 discrete actions, batch 24,
d_model 128, 2 layers, 4 critics, 6 gammas, 64 bins (the Agent's defaults otherwise).

The "sequence model" column is the share of an update spent in the timestep and
trajectory encoders (online forward + backward and the target forward), measured
separately on the same batch; the rest is the heads, the critic ensemble and the optimiser.

    python benchmarks/agent_update.py --quick        # about a minute on 2 CPU cores
    python benchmarks/agent_update.py --write-docs   # full run, updates docs/benchmarks.md
    python benchmarks/agent_update.py --device cuda --dtype bfloat16 --write-docs
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path

import gymnasium as gym
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # let `python benchmarks/agent_update.py` work without installing
    sys.path.insert(0, str(REPO_ROOT))

from amago2.agent import Agent  # noqa: E402
from common import (  # noqa: E402
    machine_description,
    markdown_table,
    matmul_rate,
    sequence_model_pass,
    timed,
    tune_glibc_malloc,
    update_matmul_flops,
    write_docs_section,
)

BATCH, OBS_DIM, N_ACTIONS = 24, 16, 4
KINDS = ("transformer", "mamba", "retention", "gru", "ff")


def make_batch(seq_len: int, device: str, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    b, t = BATCH, seq_len + 1
    batch = dict(
        obs=torch.randn(b, t, OBS_DIM, generator=g),
        prev_action=torch.nn.functional.one_hot(torch.randint(0, N_ACTIONS, (b, t), generator=g), N_ACTIONS).float(),
        prev_reward=torch.randn(b, t, generator=g),
        time=torch.arange(t).expand(b, -1).clone(),
        episode_start=torch.zeros(b, t, dtype=torch.bool),
        terminal=torch.zeros(b, t, dtype=torch.bool),
        mask=torch.ones(b, t, dtype=torch.bool),
    )
    batch["episode_start"][:, 0] = True
    return {k: v.to(device) for k, v in batch.items()}


def autocast(device: str, dtype: str):
    if dtype == "bfloat16":
        return torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)
    return contextlib.nullcontext()


def measure(kind: str, seq_len: int, args) -> dict:
    torch.manual_seed(0)
    obs_space = gym.spaces.Box(-5, 5, (OBS_DIM,))
    agent = Agent(obs_space, gym.spaces.Discrete(N_ACTIONS), max_seq_len=seq_len, traj_encoder=kind).to(args.device)
    params = [p for p in agent.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    batch = make_batch(seq_len, args.device)

    def update():
        with autocast(args.device, args.dtype):
            loss, _ = agent.loss(batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        agent.update_targets()

    t_update = timed(update, args.device, args.reps, args.budget_s)
    t_seq = timed(lambda: sequence_model_pass(agent, batch, lambda: autocast(args.device, args.dtype)),
                  args.device, args.reps, args.budget_s / 2)  # fmt: skip
    flops = update_matmul_flops(agent, batch, lambda: autocast(args.device, args.dtype))
    n_params = sum(p.numel() for p in params)
    return dict(kind=kind, seq_len=seq_len, updates_per_s=1 / t_update, ms=1000 * t_update,
                seq_share=min(t_seq / t_update, 1.0), params=n_params, gflop=flops / 1e9)  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--seq-lens", nargs="+", type=int, default=[256, 1024])
    p.add_argument("--quick", action="store_true", help="context 256 only, fewer repetitions")
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--budget-s", type=float, default=60.0, help="time limit per setting")
    p.add_argument("--write-docs", action="store_true", help="record the table in docs/benchmarks.md")
    args = p.parse_args()
    if args.quick:
        if args.write_docs:
            p.error("--write-docs records the full benchmark; drop --quick")
        args.seq_lens, args.reps, args.budget_s = [256], 3, 10.0
    if args.device == "cpu":
        tune_glibc_malloc()

    peak = matmul_rate(args.device, torch.bfloat16 if args.dtype == "bfloat16" else torch.float32) / 1e9
    print(f"one 2048x2048 {args.dtype} matmul: {peak:.0f} GFLOP/s")
    rows = []
    for seq_len in args.seq_lens:
        for kind in args.kinds:
            r = measure(kind, seq_len, args)
            print(f"{kind:12s} L={seq_len:5d}  {r['updates_per_s']:7.2f} updates/s  "
                  f"({r['ms']:8.1f} ms, sequence model {100 * r['seq_share']:.0f}%, {r['gflop']:.1f} GFLOP)", flush=True)  # fmt: skip
            rows.append(r)
    machine = machine_description(args.device) + f" | {args.dtype}"
    table = markdown_table(
        ["encoder", "context", "updates/s", "ms/update", "sequence model share", "matmul GFLOP/update",
         "GFLOP/s reached", "trainable params"],
        [[r["kind"], str(r["seq_len"]), f"{r['updates_per_s']:.2f}", f"{r['ms']:.0f}", f"{100 * r['seq_share']:.0f}%",
          f"{r['gflop']:.1f}", f"{r['gflop'] * r['updates_per_s']:.0f}", f"{r['params'] / 1e6:.2f}M"] for r in rows],
    )  # fmt: skip
    print("\n" + table)
    if args.write_docs:
        device = args.device.split(":")[0]
        body = (
            f"## Agent updates ({device}, {args.dtype})\n\n"
            f"Generated by `python benchmarks/agent_update.py --device {device} --dtype {args.dtype} --write-docs`.\n"
            f"Batch {BATCH}, {OBS_DIM}-d vector observations, {N_ACTIONS} discrete actions, d_model 128, "
            "2 layers, 4 critics, 6 gammas, 64 bins. One update = loss, backward, clipping, AdamW, Polyak. "
            "Matmul GFLOP counts the matrix products, convolutions and attention of the loss and its backward "
            "(torch.utils.flop_counter; elementwise work such as softmaxes and Mamba's scan is not counted); "
            f"one 2048x2048 {args.dtype} matmul reaches {peak:.0f} GFLOP/s on this machine.\n\n"
            f"**Machine:** {machine}\n\n{table}\n"
        )
        print(f"updated {write_docs_section(f'agent:{device}:{args.dtype}', body)}")


if __name__ == "__main__":
    main()
