"""The one data layout shared by rollouts, the replay store, offline datasets and the agent.

A *trajectory* is one uninterrupted context of the agent: from an environment reset to the
end of the rollout. In meta-RL a trajectory is a whole trial of k episodes; the agent keeps
its memory across the episodes of a trial, and the RL problem it solves is the trial.

A trajectory of T transitions has T + 1 *tokens*. Token t holds what the agent sees at step t:

    obs[t]            the observation (array, or a dict of arrays; a dict may hold the
                      allowed actions under ACTION_MASK_KEY)
    prev_action[t]    float [A]: the action taken at step t-1 (one-hot for Discrete(A));
                      zeros at t = 0. Inner episode starts keep the last action of the
                      previous episode, so prev_action[1:] is exactly the actions taken.
    prev_reward[t]    float: the reward of the transition t-1 -> t; 0 at t = 0.
    time[t]           int: the step index inside the current episode (0 at each episode start).
    episode_start[t]  bool: True at t = 0 and wherever a new episode of the trial began.
    terminal[t]       bool: True only on the last token, and only if the trajectory ended in
                      a true terminal state (no bootstrapping). A trajectory that was cut off
                      (time limit, end of trial budget, segment of a long rollout) ends with
                      terminal False, and its value bootstraps from its last token.

So transition t (0 <= t < T) is (token t, action prev_action[t+1], reward prev_reward[t+1],
done terminal[t+1], token t+1).

A training *batch* is a dict of tensors holding windows of L + 1 consecutive tokens from
trajectories, batch-first: [B, L + 1, ...] for every key above, plus

    mask[b, t]        bool: token t is real data (False for padding after a trajectory's end).
    position[b]       int [B]: the index, in its whole trajectory, of the window's first token
                      (trajectory encoders with absolute positions number tokens from it, as
                      they do in rollouts).

Transition t of a window is used in the losses iff mask[:, t + 1]. A window may start in the
middle of a trajectory; the agent then starts from a fresh memory at the window's start.
"""

from __future__ import annotations

TOKEN_KEYS = ("obs", "prev_action", "prev_reward", "time", "episode_start")
"""What the timestep encoder reads for each token."""

TRAJECTORY_KEYS = TOKEN_KEYS + ("terminal",)
"""What a stored trajectory holds, each with T + 1 entries along its first axis."""

BATCH_KEYS = TRAJECTORY_KEYS + ("mask", "position")
"""What a training batch holds: [B, L + 1, ...] for every key but `position` ([B])."""

ACTION_MASK_KEY = "action_mask"
"""An entry of a dict `obs`: bool [A], the actions allowed at that token (one flag per entry
of `prev_action`). Stored with the observation, so training sees the masks rollouts saw."""
