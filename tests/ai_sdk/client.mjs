// The Vercel AI SDK as a caller of the gateway: node client.mjs '<json case>' prints one JSON result.
// A case: {baseURL, apiKey, model, prompt, mode: "stream" | "generate", previousResponseId?, image?, body?}.
// `body`: fields merged into the request's JSON (the emulator's controls in `overrideConfig`), which
// the SDK has no option for: its `fetch` hook adds them.
// `.responses(model)` is the AI SDK's model on OpenAI's Responses API (its default for OpenAI).
import { generateText, streamText } from "ai";
import { createOpenAI } from "@ai-sdk/openai";

const c = JSON.parse(process.argv[2]);
const withBody = (url, init) => (c.body && init?.body
  ? fetch(url, { ...init, body: JSON.stringify({ ...JSON.parse(init.body), ...c.body }) })
  : fetch(url, init));
const openai = createOpenAI({ baseURL: c.baseURL, apiKey: c.apiKey, fetch: withBody });
const model = openai.responses(c.model);
const content = [{ type: "text", text: c.prompt }];
if (c.image) content.push({ type: "image", image: new URL(c.image) });
const request = {
  model,
  messages: [{ role: "user", content }],
  maxRetries: 0,
  providerOptions: { openai: c.previousResponseId ? { previousResponseId: c.previousResponseId } : {} },
};

async function run() {
  if (c.mode === "generate") {
    const result = await generateText(request);
    return { text: result.text, responseId: result.providerMetadata?.openai?.responseId ?? null,
             finishReason: result.finishReason, reasoning: result.reasoningText ?? null };
  }
  const result = streamText(request);
  const deltas = [];
  const parts = [];
  for await (const part of result.fullStream) {
    parts.push(part.type);
    if (part.type === "text-delta") deltas.push(part.text);
    if (part.type === "error") return { error: String(part.error?.message ?? part.error), parts };
  }
  const metadata = await result.providerMetadata;
  return { deltas, text: await result.text, parts, finishReason: await result.finishReason,
           responseId: metadata?.openai?.responseId ?? null, reasoning: (await result.reasoningText) ?? null,
           sources: (await result.sources).map((s) => s.url ?? s.title ?? null) };
}

try {
  console.log(JSON.stringify(await run()));
} catch (err) {
  console.log(JSON.stringify({ error: String(err?.message ?? err), name: err?.constructor?.name ?? null }));
}
