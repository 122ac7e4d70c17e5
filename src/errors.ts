// The errors that cross layers (store → engine → CLI or HTTP), typed so that each front end
// maps them in one place: src/cmd/errors.ts to a one-line message, src/server/errors.ts to a
// status and an error body. Nothing reads an error's message to decide what it is.
// (BudgetError, from engine/budget/steering.ts, is one more.) None of them reaches MLX: the
// CLI's error layer imports them, and must say in one line that the shim cannot be loaded.

/**
 * The configuration ($MLX_HOME/models.toml) cannot be read or is malformed: the operator's to
 * fix, not the request's. The message starts with the file (and line) and says what is wrong.
 */
export class ConfigError extends Error {
  override name = "ConfigError";
}

/** A model name that is no alias, stored model, source or path. */
export class ModelNotFoundError extends Error {
  override name = "ModelNotFoundError";
  constructor(
    message: string,
    /** Names that look close to the one asked for. */
    readonly suggestions: string[] = [],
  ) {
    super(message);
  }
}

/** A stored model that a running process (or request) is using, so it cannot be removed now. */
export class ModelInUseError extends Error {
  override name = "ModelInUseError";
}

/** A model known by its source (an alias) but not in the store yet, whose pull failed. */
export class ModelPullError extends Error {
  override name = "ModelPullError";
}

/** The prompt, and room for at least one generated token, do not fit the model's context; `param` names it (API spelling). */
export class ContextLengthError extends Error {
  override name = "ContextLengthError";
  constructor(
    message: string,
    readonly param = "messages",
  ) {
    super(message);
  }
}

/** A request value out of range or not understood; `param` names it (API spelling). */
export class InvalidParameterError extends Error {
  override name = "InvalidParameterError";
  constructor(
    message: string,
    readonly param: string | null = null,
  ) {
    super(message);
  }
}

/** Something the request asks for that this model cannot do (e.g. chat without a chat template). */
export class UnsupportedError extends Error {
  override name = "UnsupportedError";
  constructor(
    message: string,
    readonly param: string | null = null,
  ) {
    super(message);
  }
}

/**
 * The model's chat template uses what our renderer (@huggingface/jinja) lacks of Python's Jinja2,
 * which transformers and vLLM render it with: the server's limit, not the request's fault (a
 * template's own raise_exception, refusing the messages, is an InvalidParameterError).
 */
export class ChatTemplateUnsupportedError extends Error {
  override name = "ChatTemplateUnsupportedError";
}

/** An adapter directory that is missing, malformed, or does not fit the model it is applied to. */
export class AdapterError extends Error {
  override name = "AdapterError";
}

/** A process holding part of a model split across processes is gone: its requests fail until this one stops. */
export class RankLostError extends Error {
  override name = "RankLostError";
}

/** Too many generations already wait for this model. */
export class QueueFullError extends Error {
  override name = "QueueFullError";
}

/**
 * A remote provider (models.toml `provider = ...`) did not give an answer: unreachable, an
 * error status, a broken or silent stream, its circuit open, its queue full, or an answer that
 * does not match the requested JSON Schema. The message names the provider and carries its own.
 */
export class ProviderError extends Error {
  override name = "ProviderError";
  constructor(
    message: string,
    /**
     * rejected: the provider refused the request itself (its 400); rate_limited: still so after
     * the retries; overloaded: it said so (Anthropic's 529, or an overloaded_error event in its stream).
     */
    readonly kind:
      | "unavailable"
      | "timeout"
      | "circuit_open"
      | "queue_full"
      | "invalid_answer"
      | "rejected"
      | "rate_limited"
      | "overloaded",
    /** Seconds after which trying again makes sense (circuit open, queue full, rate limited). */
    readonly retryAfterS?: number,
    /** The request's parameter the provider named, where it refused one. */
    readonly param?: string,
  ) {
    super(message);
  }
}

/** A JSON schema (or grammar) that cannot be compiled into a constraint. */
export class SchemaError extends InvalidParameterError {
  override name = "SchemaError";
}

/** Model files that cannot be read or built into a model. */
export class ModelLoadError extends Error {
  override name = "ModelLoadError";
}
