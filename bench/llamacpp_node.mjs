// The limit reference for CPU generation: llama.cpp through node-llama-cpp (prebuilt llama.cpp binaries from
// npm), on the same SmolLM2-135M GGUF that saferounds converts. llama-cpp-python only ships as source on PyPI
// and compiling it here did not finish (bench/README.md); node-llama-cpp's npm package carries a compiled
// llama.cpp for linux-x64, so the same engine runs without a build.
//
//   mkdir -p /work/.bench-node-llamacpp && cd /work/.bench-node-llamacpp && npm install node-llama-cpp@3.22.1
//   .venv/bin/python bench/fast_generate.py --dump-prompts /tmp/prompts.json --prompts 16    # same prompts, chat template
//   NODE_PATH=/work/.bench-node-llamacpp/node_modules node bench/llamacpp_node.mjs /tmp/prompts.json GGUF \
//        --k 4 --max-new-tokens 32 --threads 1 --parallel 32
//
// K samples per prompt at the prompts' temperature / top-p, `--parallel` sequences decoded together in one
// context (llama.cpp batches them), EOS ends a sample. Prints JSON: generated tokens, wall and process CPU
// seconds, tokens per CPU-second and per wall-second.
import {createRequire} from "node:module";
import fs from "node:fs";
import path from "node:path";

const require = createRequire(path.join(process.env.NODE_PATH || process.cwd(), "x.js"));
const {getLlama, LlamaLogLevel} = await import(require.resolve("node-llama-cpp"));

const args = process.argv.slice(2);
const opt = (name, dflt) => {
    const i = args.indexOf(`--${name}`);
    return i >= 0 ? Number(args[i + 1]) : dflt;
};
const [promptsFile, gguf] = args;
const spec = JSON.parse(fs.readFileSync(promptsFile, "utf8"));
const k = opt("k", 4), maxNew = opt("max-new-tokens", 32), threads = opt("threads", 1), parallel = opt("parallel", 32);

const llama = await getLlama({gpu: false, build: "never", logLevel: LlamaLogLevel.error});
const model = await llama.loadModel({modelPath: gguf});
const jobs = spec.prompts.flatMap((text, p) => Array.from({length: k}, (_, j) => ({text, seed: 1000 * p + j})));
const longest = Math.max(...jobs.map((j) => model.tokenize(j.text, true).length));
const context = await model.createContext({contextSize: longest + maxNew + 8, sequences: parallel, threads,
                                           batchSize: Math.max(512, parallel * 8)});

async function one(seq, job) {
    const out = [];
    const tokens = model.tokenize(job.text, true);
    for await (const t of seq.evaluate(tokens, {temperature: spec.temperature, topP: spec.top_p, seed: job.seed})) {
        if (model.isEogToken(t)) { out.push(t); break; }
        out.push(t);
        if (out.length >= maxNew) break;
    }
    await seq.clearHistory();
    return out.length;
}

const cpu0 = process.cpuUsage(), t0 = performance.now();
let generated = 0, next = 0;
const workers = Array.from({length: Math.min(parallel, jobs.length)}, () => context.getSequence());
await Promise.all(workers.map(async (seq) => {
    while (next < jobs.length) {
        const job = jobs[next++];
        const n = await one(seq, job);  // (not `generated += await ...`: that reads `generated` before the await)
        generated += n;
    }
}));
const wall = (performance.now() - t0) / 1000;
const cpu = process.cpuUsage(cpu0);
const cpuS = (cpu.user + cpu.system) / 1e6;
console.log(JSON.stringify({engine: "llama.cpp (node-llama-cpp 3.22.1, prebuilt)", gguf, samples: jobs.length,
                            prompts: spec.prompts.length, k, max_new_tokens: maxNew, threads, parallel,
                            generated_tokens: generated, wall_s: +wall.toFixed(2), cpu_s: +cpuS.toFixed(2),
                            tok_per_cpu_s: +(generated / cpuS).toFixed(1), tok_per_wall_s: +(generated / wall).toFixed(1)}));
await context.dispose();
await model.dispose();
