// Chat templates for instruction-tuned GGUFs that carry none: the family's own turn format, as
// its instruction-tuned releases define it, and the token that ends a turn (it must stop
// generation like EOS).

export interface DefaultTemplate {
  template: string;
  /** The token that ends the assistant's turn. */
  endOfTurn: string;
}

/**
 * Gemma's turns (Gemma 2 and 3): `<start_of_turn>user|model\n…<end_of_turn>\n`, a system message
 * put at the start of the first user turn: the template of google/gemma-3-*-it (only its indentation differs).
 */
const gemma: DefaultTemplate = {
  endOfTurn: "<end_of_turn>",
  template: `{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
  {%- if messages[0]['content'] is string -%}
    {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}
  {%- else -%}
    {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}
  {%- endif -%}
  {%- set loop_messages = messages[1:] -%}
{%- else -%}
  {%- set first_user_prefix = "" -%}
  {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
  {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
    {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
  {%- endif -%}
  {%- if message['role'] == 'assistant' -%}
    {%- set role = "model" -%}
  {%- else -%}
    {%- set role = message['role'] -%}
  {%- endif -%}
  {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else "") }}
  {%- if message['content'] is string -%}
    {{ message['content'] | trim }}
  {%- elif message['content'] is iterable -%}
    {%- for item in message['content'] -%}
      {%- if item['type'] == 'image' -%}
        {{ '<start_of_image>' }}
      {%- elif item['type'] == 'text' -%}
        {{ item['text'] | trim }}
      {%- endif -%}
    {%- endfor -%}
  {%- else -%}
    {{ raise_exception("Invalid content type") }}
  {%- endif -%}
  {{ '<end_of_turn>\\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
  {{ '<start_of_turn>model\\n' }}
{%- endif -%}`,
};

/** By GGUF architecture. */
const byArchitecture: Record<string, DefaultTemplate> = { gemma: gemma, gemma2: gemma, gemma3: gemma };

/** The template for a model of `architecture` that has none of its own, if we know its family's. */
export function defaultChatTemplate(architecture: string | undefined): DefaultTemplate | undefined {
  return architecture === undefined ? undefined : byArchitecture[architecture];
}
