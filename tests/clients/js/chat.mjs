// Chat whole and streamed, tool calls, embeddings and the model list.
import { connect, messages, model, report } from './connect.mjs'

const ollama = connect()
const whole = await ollama.chat({ model, messages })
const stream = await ollama.chat({ model, messages, stream: true })
const pieces = []
let last = null
for await (const part of stream) {
  pieces.push(part.message.content)
  last = part
}
const tools = [{
  type: 'function',
  function: {
    name: 'weather',
    description: "Today's weather in a city.",
    parameters: { type: 'object', properties: { city: { type: 'string' } } }
  }
}]
const called = await ollama.chat({ model, messages: [{ role: 'user', content: 'call: Seoul' }], tools })
const embedded = await ollama.embed({ model: 'embeddinggemma', input: ['a', 'b'] })
const listed = await ollama.list()
report({
  content: whole.message.content,
  prompt_eval_count: whole.prompt_eval_count,
  eval_count: whole.eval_count,
  pieces,
  last_done: last.done,
  last_eval_count: last.eval_count,
  tool_calls: called.message.tool_calls,
  dimensions: embedded.embeddings.map(e => e.length),
  models: listed.models.map(m => m.model).sort()
})
