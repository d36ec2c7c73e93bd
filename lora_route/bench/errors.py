"""The one exception of the benchmark that is a result, not a failure."""


class ProviderUnavailable(Exception):
    """A provider cannot run a workload on this install; the message is recorded as the skip reason."""
