// The page of `pixeldiffusion serve`: builds the form from /api/model, posts it to /api/generate and shows
// the stream of JSON lines that comes back (frames of the denoising, then the finished PNG). For a distilled
// model ("live"), every change of a field generates again, as you type.
"use strict";

const $ = (id) => document.getElementById(id);
let model = null;
let running = false; // a generation is streaming
let again = false; // a field changed while it was: generate once more when it ends

async function loadModel() {
  const response = await fetch("/api/model");
  model = await response.json();
  const kind = { none: "unconditional", class: "class-conditional", context: "context-conditional" };
  $("model").textContent =
    `${model.name}: ${kind[model.conditioning]}, ${model.image_size}×${model.image_size} pixels, T = ${model.timesteps}`;
  if (model.conditioning === "class") {
    model.classes.forEach((name, index) => $("label").add(new Option(name, index)));
    $("label-field").hidden = false;
  }
  if (model.conditioning === "context") {
    for (const name of model.context_names) {
      const box = Object.assign(document.createElement("input"), { type: "checkbox" });
      const label = document.createElement("label");
      label.append(box, ` ${name}`);
      $("context").append(label);
    }
    $("context-field").hidden = false;
  }
  for (const name of model.limits.samplers) $("sampler").add(new Option(name, name));
  for (const field of ["steps", "guidance", "seed", "n"]) {
    [$(field).min, $(field).max] = model.limits[field];
  }
  for (const field of ["sampler", "steps", "guidance", "seed", "n"]) $(field).value = model.defaults[field];
  $("generate").disabled = false;
  if (model.live) {
    $("model").textContent += ` (distilled from ${model.distilled_from}: the images follow your changes)`;
    for (const id of ["label", "context", "sampler", "steps", "guidance", "seed", "n"]) {
      $(id).addEventListener("input", regenerate);
    }
    regenerate();
  }
}

// Live models: generate now, or right after the generation under way (the latest settings win).
function regenerate() {
  if (running) again = true;
  else generate();
}

// A number input's value, or null when it does not hold a number (the server then says what it expects).
const number = (input) => (input.value.trim() === "" ? null : Number(input.value));

function requestBody() {
  const body = {
    sampler: $("sampler").value,
    steps: number($("steps")),
    guidance: number($("guidance")),
    seed: number($("seed")),
    n: number($("n")),
  };
  if (model.conditioning === "class" && $("label").value !== "") body.label = Number($("label").value);
  if (model.conditioning === "context") {
    const context = [...$("context").querySelectorAll("input")].map((box) => (box.checked ? 1 : 0));
    if (context.includes(1)) body.context = context; // none ticked: each context in turn
  }
  return body;
}

// The JSON objects of a response body of JSON lines, as they arrive.
async function* jsonLines(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    const lines = (pending + value).split("\n");
    pending = lines.pop();
    for (const line of lines) if (line.trim()) yield JSON.parse(line);
  }
}

function showError(message) {
  $("error").textContent = message ?? "";
  $("error").hidden = !message;
}

function showFrame(frame) {
  $("x_t").src = frame.x_t;
  $("x0").src = frame.x0;
  $("progress").value = frame.step / frame.steps;
  $("status").textContent = `Step ${frame.step} of ${frame.steps}: t = ${frame.t}`;
}

function showResult(result) {
  $("x_t").src = result.image;
  $("progress").value = 1;
  $("status").textContent = `Done in ${result.seconds} s (seed ${result.seed}).`;
  $("download").href = result.image;
  $("download").download = `pixeldiffusion-seed-${result.seed}.png`;
  $("download").hidden = false;
}

async function generate(event) {
  event?.preventDefault();
  running = true;
  again = false;
  showError(null);
  $("generate").disabled = true;
  $("download").hidden = true;
  $("progress").value = 0;
  $("status").textContent = "Starting…";
  try {
    const response = await fetch("/api/generate", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(requestBody()),
    });
    if (!response.ok) {
      const answer = await response.json().catch(() => ({ error: `the server answered ${response.status}` }));
      throw new Error(answer.error);
    }
    let finished = false;
    for await (const message of jsonLines(response.body)) {
      if (message.type === "queued") $("status").textContent = "Waiting for the generation before this one…";
      else if (message.type === "frame") showFrame(message);
      else if (message.type === "error") throw new Error(message.error);
      else if (message.type === "done") {
        showResult(message);
        finished = true;
      }
    }
    if (!finished) throw new Error("the server stopped before the images were finished");
  } catch (error) {
    showError(error.message);
    $("status").textContent = "";
  } finally {
    $("generate").disabled = false;
    running = false;
    if (again) generate();
  }
}

$("controls").addEventListener("submit", generate);
$("random-seed").addEventListener("click", () => {
  $("seed").value = Math.floor(Math.random() * (model.limits.seed[1] + 1));
  if (model.live) regenerate();
});
loadModel().catch((error) => showError(`cannot load the model: ${error.message}`));
