"""The pipeline's exceptions: one small hierarchy, messages a user can act on."""


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""


class ConfigError(PipelineError):
    """Invalid configuration; the message is one line naming the key and the problem."""


class InvalidTrade(PipelineError):
    """A frame or record that is not a valid trade; the message is the reason stored in the DLQ."""


class SinkUnavailable(PipelineError):
    """PostgreSQL cannot take the batch now; the consumer retries without committing offsets."""


class RowsRejected(PipelineError):
    """PostgreSQL refuses a value of the batch for good (nothing stored): retrying cannot help.
    The consumer splits the batch to find the row; the message, the database's reason with its
    SQLSTATE, goes to the DLQ with it."""


class JobStoreUnavailable(PipelineError):
    """The history jobs' table cannot be reached now; the job runner waits and tries again."""


class StackError(PipelineError):
    """The local Kafka/PostgreSQL stack cannot start or stop."""
