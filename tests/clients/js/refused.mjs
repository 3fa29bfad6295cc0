// A refused request, whole and streamed: what the caught errors look like.
import { connect, described, messages, model, report } from './connect.mjs'

const ollama = connect()
const errors = []
try {
  await ollama.chat({ model, messages })
} catch (error) {
  errors.push(described(error))
}
try {
  for await (const part of await ollama.chat({ model, messages, stream: true })) {
    errors.push({ unexpected: part })
  }
} catch (error) {
  errors.push(described(error))
}
report({ errors })
