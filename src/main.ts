#!/usr/bin/env bun
// The `mlx` executable: one subcommand per file in src/cmd/.
import { defineCommand, runMain } from "citty";
import pkg from "../package.json" with { type: "json" };

const main = defineCommand({
  meta: { name: "mlx", version: pkg.version, description: "Run, chat with, serve and benchmark local LLMs on MLX" },
  subCommands: {
    run: () => import("./cmd/run").then((m) => m.default),
    chat: () => import("./cmd/chat").then((m) => m.default),
    "cache-prompt": () => import("./cmd/cache-prompt").then((m) => m.default),
    convert: () => import("./cmd/convert").then((m) => m.default),
    fuse: () => import("./cmd/fuse").then((m) => m.default),
    pull: () => import("./cmd/pull").then((m) => m.default),
    list: () => import("./cmd/list").then((m) => m.default),
    show: () => import("./cmd/show").then((m) => m.default),
    rm: () => import("./cmd/rm").then((m) => m.default),
    verify: () => import("./cmd/verify").then((m) => m.default),
    serve: () => import("./cmd/serve").then((m) => m.default),
    bench: () => import("./cmd/bench").then((m) => m.default),
    embed: () => import("./cmd/embed").then((m) => m.default),
    launch: () => import("./cmd/launch").then((m) => m.default),
  },
});

runMain(main);
