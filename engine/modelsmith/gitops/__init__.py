"""GitOps: desired state (the YAML) against actual state (the event log)."""
