// Abort a stream after its second piece, as a "stop" button does.
import { connect, described, messages, model, report } from './connect.mjs'

const ollama = connect()
const stream = await ollama.chat({ model, messages, stream: true })
const pieces = []
let error = null
try {
  for await (const part of stream) {
    pieces.push(part.message.content)
    if (pieces.length === 2) stream.abort()
  }
} catch (caught) {
  error = described(caught)
}
report({ pieces, error })
