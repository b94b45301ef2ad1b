"""The starter campaign written by ``batchsend init`` (data only)."""
