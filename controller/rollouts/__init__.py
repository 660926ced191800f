"""Fleet rollouts: inventory (tags, groups), desired state and reconciliation, the rollout
state machine with its waves and gates, and the scheduler jobs that drive it."""
