export {
  Tokenizer,
  type ChatMessage,
  type ChatTemplateOptions,
  type DecodeOptions,
  type EncodeOptions,
} from "./tokenizer";
export { tokenizerFilesFromGGUF, type TokenizerFiles } from "./gguf";
export {
  createDetokenizer,
  ByteLevelDetokenizer,
  IncrementalDetokenizer,
  type DetokenizerOptions,
  type StreamingDetokenizer,
} from "./detokenizer";
