// The openai npm SDK as a caller of the gateway: node client.mjs '<json case>' prints one JSON result.
// A case: {baseURL, apiKey, model, question, mode: "models" | "create" | "stream" | "abort", body?}.
import OpenAI from "openai";

const c = JSON.parse(process.argv[2]);
const api = new OpenAI({ baseURL: c.baseURL, apiKey: c.apiKey, maxRetries: 0, timeout: 20000 });
const request = { model: c.model, messages: [{ role: "user", content: c.question }], ...(c.body || {}) };

async function run() {
  if (c.mode === "models") {
    const page = await api.models.list();
    return { models: page.data.map((m) => ({ id: m.id, name: m.name, object: m.object })) };
  }
  if (c.mode === "create") {
    const { data, response } = await api.chat.completions.create(request).withResponse();
    return { completion: data, streamId: response.headers.get("x-flowise-stream-id") };
  }
  const controller = new AbortController();
  const stream = await api.chat.completions.create(
    { ...request, stream: true }, { signal: controller.signal });
  const chunks = [];
  for await (const chunk of stream) {
    chunks.push(chunk);
    if (c.mode === "abort" && chunks.length === 3) {
      controller.abort();
      break;
    }
  }
  return { chunks };
}

try {
  console.log(JSON.stringify(await run()));
} catch (err) {
  console.log(JSON.stringify({
    error: { name: err.constructor.name, isAPIError: err instanceof OpenAI.APIError, status: err.status ?? null,
             message: err.message, body: err.error ?? null },
  }));
}
