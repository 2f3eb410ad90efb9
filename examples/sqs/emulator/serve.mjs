// Starts fauxqs, an SQS-compatible server that speaks the AWS JSON 1.0
// protocol, on a free port without request logs, and prints its URL. The
// Makefile copies this file beside the installed node_modules.
import { startFauxqs } from 'fauxqs';

const server = await startFauxqs({ port: 0, logger: false, host: '127.0.0.1' });
console.log(`listening at http://127.0.0.1:${server.port}`);
