/* The Attention Book: interactive attention explorer, one widget for every model.
 *
 * Markup: <div class="attn-explorer" data-src="…/explorer.json"></div> (several per page are independent).
 * Data (written by attnbook.viz.explorer.explorer_json; format in its docstring):
 *   {version, model, num_layers, num_heads, causal?, layer_names?, head_names?, head_roles?[layer][head],
 *    scale?, description?,
 *    sentences: [{text, tokens: [..], attention[layer][head][query][key],
 *                 scores?[layer][head] = [query][key] (null = masked) or null,
 *                 next_token?: {tokens[pos][k], logits[pos][k]},
 *                 image?: {src, patch_grid: [rows, cols], first_patch}}]}
 * Files of the first format (no "version": chapter 17) load unchanged.
 * Everything is served by the site itself; nothing is fetched from elsewhere.
 * State is mirrored on the root element (data-sentence, data-layer, data-head, data-token,
 * data-temperature, data-topk) so that it can be inspected, and tested, from outside.
 *
 * Keyboard: each control is one tab stop; the tokens and the layer × head grid are one tab
 * stop each (roving focus), the arrow keys (and Home/End) move inside them. Screen readers
 * get the weights as text: each token's label carries its weight, a live line names the
 * strongest keys, and visually hidden tables hold the current head's matrix and stages.
 */
(function () {
  "use strict";

  function cssColor(name, fallback) {
    const value = getComputedStyle(document.body).getPropertyValue(name).trim();
    return value || fallback;
  }

  function parseColor(text) {
    const probe = document.createElement("canvas").getContext("2d");
    probe.fillStyle = text;
    const hex = probe.fillStyle; // normalised to #rrggbb or rgba(...)
    if (hex.startsWith("#")) {
      return [1, 3, 5].map((i) => parseInt(hex.slice(i, i + 2), 16));
    }
    return hex.match(/[\d.]+/g).slice(0, 3).map(Number);
  }

  function palette() {
    const dark = document.body.getAttribute("data-md-color-scheme") === "slate";
    const bg = parseColor(cssColor("--md-default-bg-color", dark ? "#1e2129" : "#ffffff"));
    const fg = cssColor("--md-default-fg-color", dark ? "#e3e6ea" : "#1f2328");
    const fgRgb = parseColor(dark ? "#e3e6ea" : "#1f2328");
    const masked = bg.map((c, i) => Math.round(c + (fgRgb[i] - c) * 0.14));
    return {
      bg: bg,
      fg: fg,
      hot: parseColor(dark ? "#c7e6ff" : "#08306b"),
      mid: parseColor(dark ? "#3d8fd1" : "#4292c6"),
      accent: cssColor("--md-accent-fg-color", "#ff6e42"),
      masked: `rgb(${masked.join(", ")})`,
      hatch: `rgb(${bg.map((c, i) => Math.round(c + (fgRgb[i] - c) * 0.35)).join(", ")})`,
    };
  }

  // The book's attention colour map: 0 = page background, 1 = strongest.
  function shade(weight, pal) {
    const w = Math.max(0, Math.min(1, weight));
    const [from, to, t] = w < 0.5 ? [pal.bg, pal.mid, w * 2] : [pal.mid, pal.hot, (w - 0.5) * 2];
    const rgb = from.map((c, i) => Math.round(c + (to[i] - c) * t));
    return `rgb(${rgb[0]}, ${rgb[1]}, ${rgb[2]})`;
  }

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    Object.entries(attrs || {}).forEach(([k, v]) => {
      if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    });
    (children || []).forEach((c) => node.appendChild(c));
    return node;
  }

  function uid(cls) {
    return `${cls}-${Math.random().toString(36).slice(2, 8)}`;
  }

  function select(label, cls, options) {
    const id = uid(cls);
    const box = el("select", { class: cls, id: id });
    options.forEach(([value, text]) => box.appendChild(el("option", { value: String(value), text: text })));
    return [el("label", { for: id, text: label }), box];
  }

  // A token as shown: whitespace made visible (a character model's space or newline).
  function shown(token) {
    const t = String(token);
    if (t === "") return "∅";
    if (t.trim() === "") return t.replace(/ /g, "␣").replace(/\n/g, "⏎").replace(/\t/g, "⇥");
    return t.replace(/\n/g, "⏎");
  }

  function fmt(x, digits) {
    if (x === null || x === undefined || !Number.isFinite(x)) return x === -Infinity || x === null ? "−∞" : "–";
    return x.toFixed(digits).replace("-", "−");
  }

  function softmax(row, temperature) {
    const t = temperature || 1;
    const finite = row.filter((v) => v !== null && Number.isFinite(v));
    if (!finite.length) return row.map(() => 0);
    const top = Math.max(...finite);
    const e = row.map((v) => (v === null || !Number.isFinite(v) ? 0 : Math.exp((v - top) / t)));
    const sum = e.reduce((a, b) => a + b, 0);
    return e.map((v) => v / sum);
  }

  function drawMasked(ctx, x, y, size, pal, height) {
    const h = height || size;
    ctx.fillStyle = pal.masked;
    ctx.fillRect(x, y, size, h);
    if (size >= 6) {  // a hatch line: masked, not merely zero
      ctx.strokeStyle = pal.hatch;
      ctx.lineWidth = 1;
      ctx.beginPath();
      ctx.moveTo(x + 1, y + h - 1);
      ctx.lineTo(x + size - 1, y + 1);
      ctx.stroke();
    }
  }

  // Draw a (q_len, k_len) matrix; with labels, queries are named on the left, keys on top.
  // With causal, key j > query i is drawn as masked.
  function drawMatrix(canvas, matrix, query, pal, cellSize, labels, causal) {
    const n = matrix.length;
    const ratio = window.devicePixelRatio || 1;
    const ctx = canvas.getContext("2d");
    ctx.font = "11px sans-serif";
    const textWidth = labels ? Math.max(...labels.map((t) => ctx.measureText(t).width)) : 0;
    const left = labels ? Math.ceil(textWidth) + 8 : 0;
    const top = labels ? Math.ceil(textWidth * 0.87) + 12 : 0; // labels on top are rotated by 60°
    const width = left + cellSize * n + (labels ? Math.ceil(textWidth * 0.5) : 0), height = top + cellSize * n;
    canvas.width = width * ratio;
    canvas.height = height * ratio;
    canvas.style.width = `${width}px`;
    canvas.style.height = `${height}px`;
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        if (causal && j > i) {
          drawMasked(ctx, left + j * cellSize, top + i * cellSize, cellSize, pal);
          continue;
        }
        ctx.fillStyle = shade(matrix[i][j], pal);
        ctx.fillRect(left + j * cellSize, top + i * cellSize, cellSize, cellSize);
      }
    }
    if (labels) {
      ctx.font = "11px sans-serif";
      ctx.fillStyle = pal.fg;
      ctx.textBaseline = "middle";
      labels.forEach((t, i) => {
        ctx.textAlign = "right";
        ctx.fillStyle = query === i ? pal.accent : pal.fg;
        ctx.fillText(t, left - 5, top + (i + 0.5) * cellSize);
        ctx.save();
        ctx.translate(left + (i + 0.5) * cellSize, top - 5);
        ctx.rotate(-Math.PI / 3);
        ctx.textAlign = "left";
        ctx.fillStyle = pal.fg;
        ctx.fillText(t, 0, 0);
        ctx.restore();
      });
    }
    if (query !== null && query !== undefined && cellSize >= 4) {
      ctx.strokeStyle = pal.accent;
      ctx.lineWidth = 2;
      ctx.strokeRect(left + 1, top + query * cellSize + 1, n * cellSize - 2, cellSize - 2);
    }
  }

  const STAGES = [
    ["raw", "raw score q·k"],
    ["scaled", "scaled ÷ √d_k"],
    ["masked", "masked"],
    ["softmax", "softmax = weight"],
  ];

  class Explorer {
    constructor(root, data) {
      this.root = root;
      this.data = data;
      const d = data;
      this.causal = Boolean(d.causal);
      this.layerNames = d.layer_names || [...Array(d.num_layers).keys()].map((i) => `layer ${i}`);
      this.headNames = d.head_names || [...Array(d.num_heads).keys()].map((i) => `head ${i}`);
      this.hasScores = d.sentences.some((s) => s.scores);
      this.hasNext = d.sentences.some((s) => s.next_token);
      this.hasImage = d.sentences.some((s) => s.image);
      const kept = this.hasNext ? Math.max(...d.sentences.filter((s) => s.next_token)
        .map((s) => s.next_token.logits[0].length)) : 0;
      this.kChoices = [1, 3, 5, 10, 20, 50].filter((k) => k < kept).concat(kept ? [kept] : []);
      this.state = { sentence: 0, layer: 0, head: 0, token: null, temperature: 1,
                     topk: this.kChoices.includes(10) ? 10 : this.kChoices[this.kChoices.length - 1] || 0 };
      this.images = {};
      this.build();
      this.render();
      root.setAttribute("data-ready", "true");
    }

    get sentence() {
      return this.data.sentences[this.state.sentence];
    }

    get matrix() {
      return this.sentence.attention[this.state.layer][this.state.head];
    }

    // The query the stage, next-token and image views show: the chosen token, else the last
    // (causal: the one whose prediction is next) or the first.
    get focusQuery() {
      if (this.state.token !== null) return this.state.token;
      return this.causal ? this.sentence.tokens.length - 1 : 0;
    }

    headLabel(l, h) {
      return `${this.layerNames[l]}, ${this.headNames[h]}`;
    }

    build() {
      const d = this.data;
      window.addEventListener("resize", () => {
        clearTimeout(this.resizeTimer);
        this.resizeTimer = setTimeout(() => this.render(), 150);
      });
      const [sLabel, sentence] = select(d.version ? "Input" : "Sentence", "ae-sentence", d.sentences.map((s, i) => [i, s.text]));
      const [lLabel, layer] = select("Layer", "ae-layer", this.layerNames.map((name, i) => [i, name]));
      const [hLabel, head] = select("Head", "ae-head", this.headNames.map((name, i) => [i, name]));
      const save = el("button", { class: "md-button ae-save", type: "button", text: "Save as PNG" });
      this.controls = { sentence, layer, head };
      sentence.addEventListener("change", () => this.set({ sentence: +sentence.value, token: null }));
      layer.addEventListener("change", () => this.set({ layer: +layer.value }));
      head.addEventListener("change", () => this.set({ head: +head.value }));
      save.addEventListener("click", () => this.savePng());

      this.role = el("p", { class: "ae-role", "aria-live": "polite" });
      this.tokens = el("div", { class: "ae-tokens", role: "toolbar", "aria-label": "Tokens: focus or hover one to see what it attends to; arrow keys move" });
      this.matrixCanvas = el("canvas", { class: "ae-matrix", role: "img" });
      this.table = el("table", { class: "ae-weights" });  // (a class keeps Material's table styles off)
      this.grid = el("div", { class: "ae-grid", role: "group", "aria-label": "Overview of every layer and head: choose one; arrow keys move" });
      this.gridCells = [];
      for (let l = 0; l < d.num_layers; l++) {
        const row = el("div", { class: "ae-grid-row" }, [el("span", { class: "ae-grid-label", text: `L${l}` })]);
        for (let h = 0; h < d.num_heads; h++) {
          const role = (d.head_roles && d.head_roles[l] && d.head_roles[l][h]) || "";
          const name = this.headLabel(l, h);
          const cell = el("button", {
            class: "ae-cell", type: "button", "data-layer": l, "data-head": h,
            "aria-label": `${name}${role ? ": " + role : ""}`, title: `${name}${role ? " — " + role : ""}`,
            tabindex: l === 0 && h === 0 ? "0" : "-1",
          }, [el("canvas", { class: "ae-thumb", "aria-hidden": "true" })]);
          cell.addEventListener("click", () => this.set({ layer: l, head: h }));
          cell.addEventListener("keydown", (e) => this.gridKey(e, l, h));
          row.appendChild(cell);
          this.gridCells.push(cell);
        }
        this.grid.appendChild(row);
      }
      const bar = el("div", { class: "ae-controls" }, [sLabel, sentence, lLabel, layer, hLabel, head, save]);
      const left = [this.tokens, this.role, this.matrixCanvas, el("div", { class: "ae-sr" }, [this.table])];
      if (this.causal) {
        left.push(el("p", { class: "ae-note", text: "Causal model: a query sees only itself and earlier tokens; "
          + "later keys are masked (hatched in the matrix, struck through among the tokens)." }));
      }
      if (this.hasImage) left.push(this.buildImage());
      if (this.hasScores) left.push(this.buildStages());
      if (this.hasNext) left.push(this.buildNext());
      const main = el("div", { class: "ae-main" }, [
        el("div", { class: "ae-left" }, left),
        el("div", { class: "ae-right" }, [el("p", { class: "ae-caption", text: "All layers × heads" }), this.grid]),
      ]);
      const parts = [bar];
      if (d.description) parts.push(el("p", { class: "ae-description", text: d.description }));
      parts.push(main);
      this.root.replaceChildren(...parts);
      this.observer = new MutationObserver(() => this.render());
      this.observer.observe(document.body, { attributes: true, attributeFilter: ["data-md-color-scheme"] });
    }

    buildStages() {
      this.stageNote = el("p", { class: "ae-stage-note" });
      this.stageCanvas = el("canvas", { class: "ae-stage-canvas", role: "img" });
      this.stageTable = el("table", { class: "ae-stage-table" });
      this.stages = el("div", { class: "ae-stages" }, [
        el("p", { class: "ae-caption", text: "From scores to weights, one query of the chosen head" }),
        this.stageCanvas, this.stageNote, el("div", { class: "ae-sr" }, [this.stageTable])]);
      return this.stages;
    }

    buildNext() {
      const tempId = uid("ae-temp");
      this.tempInput = el("input", { class: "ae-temp", id: tempId, type: "range", min: "0.1", max: "2", step: "0.1", value: "1" });
      this.tempOut = el("output", { class: "ae-temp-value", for: tempId, text: "1.0" });
      const [kLabel, topk] = select("Top-k", "ae-topk", this.kChoices.map((k) => [k, String(k)]));
      this.topkSelect = topk;
      this.tempInput.addEventListener("input", () => this.set({ temperature: +this.tempInput.value }));
      topk.addEventListener("change", () => this.set({ topk: +topk.value }));
      this.nextTitle = el("p", { class: "ae-next-title", "aria-live": "polite" });
      this.cands = el("ol", { class: "ae-cands" });
      this.next = el("div", { class: "ae-next" }, [
        el("p", { class: "ae-caption", text: "Next-token distribution, from the stored logits" }),
        el("div", { class: "ae-next-controls" }, [el("label", { for: tempId, text: "Temperature" }), this.tempInput,
          this.tempOut, kLabel, topk]),
        this.nextTitle, this.cands]);
      return this.next;
    }

    buildImage() {
      this.imageCanvas = el("canvas", { class: "ae-image", role: "img" });
      this.imageBox = el("div", { class: "ae-image-box" }, [
        el("p", { class: "ae-caption", text: "The image: each patch coloured by the chosen query's weight" }),
        this.imageCanvas]);
      return this.imageBox;
    }

    set(patch) {
      Object.assign(this.state, patch);
      this.render();
    }

    gridKey(event, l, h) {
      const d = this.data;
      const moves = { ArrowRight: [0, 1], ArrowLeft: [0, -1], ArrowDown: [1, 0], ArrowUp: [-1, 0],
                      Home: [-l, -h], End: [d.num_layers - 1 - l, d.num_heads - 1 - h] };
      const move = moves[event.key];
      if (!move) return;
      event.preventDefault();
      const nl = Math.max(0, Math.min(d.num_layers - 1, l + move[0]));
      const nh = Math.max(0, Math.min(d.num_heads - 1, h + move[1]));
      this.set({ layer: nl, head: nh });
      this.gridCells[nl * this.data.num_heads + nh].focus();
    }

    tokenKey(event, i) {
      const buttons = this.tokens.querySelectorAll(".ae-token");
      const step = { ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1,
                     Home: -buttons.length, End: buttons.length }[event.key];
      if (!step) return;
      event.preventDefault();
      const next = Math.max(0, Math.min(buttons.length - 1, i + step));
      buttons[next].focus();
    }

    renderTokens(pal) {
      const tokens = this.sentence.tokens;
      if (this.tokens.childElementCount !== tokens.length || this.tokens.dataset.sentence !== String(this.state.sentence)) {
        this.tokens.replaceChildren(...tokens.map((t, i) => {
          const b = el("button", { class: "ae-token", type: "button", "data-index": i, text: shown(t), tabindex: i === 0 ? "0" : "-1" });
          b.addEventListener("mouseenter", () => this.set({ token: i }));
          b.addEventListener("focus", () => this.set({ token: i }));
          b.addEventListener("keydown", (e) => this.tokenKey(e, i));
          return b;
        }));
        this.tokens.dataset.sentence = String(this.state.sentence);
      }
      const q = this.state.token;
      this.tokens.querySelectorAll(".ae-token").forEach((b, j) => {
        const isQuery = q === j;
        const name = shown(tokens[j]);
        const future = this.causal && q !== null && j > q;
        b.classList.toggle("ae-query", isQuery);
        b.classList.toggle("ae-future", future);
        b.setAttribute("aria-pressed", isQuery ? "true" : "false");
        b.setAttribute("tabindex", j === (q === null ? 0 : q) ? "0" : "-1");  // roving focus
        if (q === null) {
          b.style.background = "";
          b.style.color = "";
          b.removeAttribute("data-weight");
          b.setAttribute("aria-label", name);
          b.title = "hover or focus to see what this token attends to";
        } else {
          const w = this.matrix[q][j];
          b.setAttribute("data-weight", w.toFixed(3));
          if (future) {
            b.style.background = "";
            b.style.color = "";
            b.setAttribute("aria-label", `${name}, masked: a later token, weight ${w.toFixed(3)}`);
            b.title = `${shown(tokens[q])} cannot see ${name}: it comes later (masked)`;
            return;
          }
          b.style.background = shade(w, pal);
          b.style.color = w > 0.45 ? (pal.bg[0] > 128 ? "#ffffff" : "#10131a") : "";
          b.setAttribute("aria-label", isQuery ? `${name} (query), weight on itself ${w.toFixed(3)}`
                                                : `${name}, weight ${w.toFixed(3)}`);
          b.title = `${shown(tokens[q])} → ${name}: ${w.toFixed(3)}`;
        }
      });
    }

    strongest(q, k) {
      const row = this.matrix[q].map((w, j) => [w, j]).sort((a, b) => b[0] - a[0]).slice(0, k);
      return row.map(([w, j]) => `“${shown(this.sentence.tokens[j])}” ${w.toFixed(2)}`).join(", ");
    }

    renderTable() {
      // the current head's weights as a table, for screen readers (visually hidden)
      const tokens = this.sentence.tokens.map(shown);
      const caption = el("caption", { text: `Attention weights of ${this.headLabel(this.state.layer, this.state.head)}: rows are queries, columns are keys${this.causal ? "; a later key is masked" : ""}.` });
      const head = el("tr", {}, [el("th", { scope: "col", text: "query \\ key" }),
        ...tokens.map((t) => el("th", { scope: "col", text: t }))]);
      const rows = this.matrix.map((row, i) => el("tr", {}, [el("th", { scope: "row", text: tokens[i] }),
        ...row.map((w, j) => el("td", { text: this.causal && j > i ? "masked" : w.toFixed(2) }))]));
      this.table.replaceChildren(caption, el("thead", {}, [head]), el("tbody", {}, rows));
    }

    // the four stages of one query row: raw, scaled, masked scores and their softmax
    stageRows(q) {
      const { layer, head } = this.state;
      const scores = this.sentence.scores && this.sentence.scores[layer] && this.sentence.scores[layer][head];
      if (!scores) return null;
      const scaled = scores[q].map((v) => (v === null ? -Infinity : v));
      const masked = scaled.map((v, j) => (this.causal && j > q ? -Infinity : v));
      const rows = {};
      if (this.data.scale) rows.raw = scaled.map((v) => (Number.isFinite(v) ? v / this.data.scale : v));
      rows.scaled = scaled;
      rows.masked = masked;
      rows.softmax = softmax(masked, 1);
      return rows;
    }

    renderStages(pal) {
      const q = this.focusQuery;
      const rows = this.stageRows(q);
      const tokens = this.sentence.tokens.map(shown);
      const where = this.headLabel(this.state.layer, this.state.head);
      if (!rows) {
        this.stages.dataset.available = "false";
        this.stageCanvas.hidden = true;
        this.stageTable.replaceChildren();
        const heads = [];
        (this.sentence.scores || []).forEach((r, l) => (r || []).forEach((m, h) => m && heads.push(this.headLabel(l, h))));
        this.stageNote.textContent = heads.length
          ? `No stored scores for ${where}; this input has them for ${heads.slice(0, 6).join("; ")}${heads.length > 6 ? " …" : ""}.`
          : "No stored scores for this input.";
        return;
      }
      this.stages.dataset.available = "true";
      this.stageCanvas.hidden = false;
      const stages = STAGES.filter(([key]) => rows[key]);
      const stored = this.matrix[q];
      const diff = Math.max(...rows.softmax.map((p, j) => Math.abs(p - stored[j])));
      this.stages.dataset.query = String(q);
      this.stages.dataset.maxDiff = diff.toFixed(4);
      this.stageNote.textContent = `Query “${tokens[q]}” of ${where}. Scores are coloured `
        + `(stronger colour = larger score; the score rows share one scale); a masked key is −∞ and gets weight 0. The softmax of the masked row `
        + `matches the stored weights to ${diff < 0.0005 ? "within rounding" : diff.toFixed(3)}.`;
      // canvas: one strip per stage
      const ctx = this.stageCanvas.getContext("2d");
      const ratio = window.devicePixelRatio || 1;
      ctx.font = "11px sans-serif";
      const labelWidth = Math.ceil(Math.max(...stages.map(([, name]) => ctx.measureText(name).width))) + 8;
      const tokenWidth = Math.ceil(Math.max(...tokens.map((t) => ctx.measureText(t).width)));
      const room = Math.max(120, Math.min(420, this.root.clientWidth - 40) - labelWidth);
      const n = tokens.length;
      const cell = Math.max(6, Math.min(44, Math.floor(room / n)));
      const top = Math.ceil(tokenWidth * 0.87) + 12, rowHeight = Math.max(16, Math.min(22, cell));
      const width = labelWidth + cell * n + Math.ceil(tokenWidth * 0.5), height = top + rowHeight * stages.length + 2;
      this.stageCanvas.width = width * ratio;
      this.stageCanvas.height = height * ratio;
      this.stageCanvas.style.width = `${width}px`;
      this.stageCanvas.style.height = `${height}px`;
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      ctx.clearRect(0, 0, width, height);
      ctx.textBaseline = "middle";
      tokens.forEach((t, j) => {
        ctx.save();
        ctx.translate(labelWidth + (j + 0.5) * cell, top - 5);
        ctx.rotate(-Math.PI / 3);
        ctx.textAlign = "left";
        ctx.fillStyle = j === q ? pal.accent : pal.fg;
        ctx.fillText(t, 0, 0);
        ctx.restore();
      });
      // the score rows share one colour scale, so that scaling visibly narrows the range; weights run 0 to 1
      const allScores = stages.filter(([key]) => key !== "softmax").flatMap(([key]) => rows[key]).filter(Number.isFinite);
      const scoreLo = Math.min(...allScores), scoreHi = Math.max(...allScores);
      stages.forEach(([key, name], r) => {
        const values = rows[key];
        const lo = key === "softmax" ? 0 : scoreLo, hi = key === "softmax" ? 1 : scoreHi;
        const y = top + r * rowHeight;
        ctx.textAlign = "right";
        ctx.fillStyle = pal.fg;
        ctx.fillText(name, labelWidth - 6, y + rowHeight / 2);
        values.forEach((v, j) => {
          const x = labelWidth + j * cell;
          if (!Number.isFinite(v)) {
            drawMasked(ctx, x, y, cell, pal, rowHeight);
          } else {
            ctx.fillStyle = shade(hi > lo ? (v - lo) / (hi - lo) : 1, pal);
            ctx.fillRect(x, y, cell, rowHeight);
          }
        });
      });
      // the stages as a table, for screen readers
      const head = el("tr", {}, [el("th", { scope: "col", text: "stage \\ key" }),
        ...tokens.map((t) => el("th", { scope: "col", text: t }))]);
      const body = stages.map(([key, name]) => el("tr", { "data-stage": key }, [el("th", { scope: "row", text: name }),
        ...rows[key].map((v) => el("td", { text: fmt(v, key === "softmax" ? 3 : 2) }))]));
      this.stageTable.replaceChildren(el("caption", { text: `Stages of query “${tokens[q]}”, ${where}.` }),
        el("thead", {}, [head]), el("tbody", {}, body));
      this.stageCanvas.setAttribute("aria-label", `Raw, scaled and masked scores and the weights of query “${tokens[q]}”, ${where}; the table that follows lists the numbers.`);
    }

    renderNext() {
      const nt = this.sentence.next_token;
      const q = this.focusQuery;
      const tokens = this.sentence.tokens;
      this.tempInput.value = String(this.state.temperature);
      this.tempOut.textContent = this.state.temperature.toFixed(1);
      this.topkSelect.value = String(this.state.topk);
      if (!nt) {
        this.nextTitle.textContent = "This input has no stored next-token logits.";
        this.cands.replaceChildren();
        return;
      }
      const k = Math.min(this.state.topk, nt.logits[q].length);
      const probs = softmax(nt.logits[q].slice(0, k), this.state.temperature);
      const context = tokens.slice(Math.max(0, q - 11), q + 1).join("");
      const actual = q + 1 < tokens.length ? tokens[q + 1] : null;
      this.nextTitle.textContent = `After “${q > 11 ? "…" : ""}${context}”: the ${k} most likely next tokens, `
        + `renormalised over the top ${k} at temperature ${this.state.temperature.toFixed(1)}`
        + (actual === null ? "." : `; the text continues with “${shown(actual)}”.`);
      this.cands.replaceChildren(...nt.tokens[q].slice(0, k).map((t, i) => {
        const p = probs[i];
        const item = el("li", { class: "ae-cand", "data-prob": p.toFixed(4) }, [
          el("span", { class: "ae-cand-token", text: shown(t) }),
          el("span", { class: "ae-cand-bar", "aria-hidden": "true" }, [el("span", { class: "ae-bar" })]),
          el("span", { class: "ae-cand-p", text: p.toFixed(3) })]);
        item.querySelector(".ae-bar").style.width = `${(100 * p).toFixed(1)}%`;
        const isActual = actual !== null && t === actual;
        item.classList.toggle("ae-actual", isActual);
        item.appendChild(el("span", { class: "ae-cand-note", text: isActual ? "actual next" : "" }));
        return item;
      }));
    }

    renderImage(pal) {
      const image = this.sentence.image;
      this.imageBox.hidden = !image;
      if (!image) return;
      let img = this.images[this.state.sentence];
      if (!img) {
        img = new Image();
        img.addEventListener("load", () => this.render());
        img.src = image.src;
        this.images[this.state.sentence] = img;
      }
      const [rows, cols] = image.patch_grid;
      const size = Math.max(120, Math.min(260, this.root.clientWidth - 40));
      const w = size, h = img.naturalWidth ? Math.round(size * img.naturalHeight / img.naturalWidth) : size;
      const ratio = window.devicePixelRatio || 1;
      const canvas = this.imageCanvas, ctx = canvas.getContext("2d");
      canvas.width = w * ratio;
      canvas.height = h * ratio;
      canvas.style.width = `${w}px`;
      canvas.style.height = `${h}px`;
      ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
      ctx.clearRect(0, 0, w, h);
      if (img.complete && img.naturalWidth) ctx.drawImage(img, 0, 0, w, h);
      const q = this.focusQuery;
      const row = this.matrix[q].slice(image.first_patch, image.first_patch + rows * cols);
      const top = Math.max(...row, 1e-9);
      const pw = w / cols, ph = h / rows;
      ctx.fillStyle = `rgb(${pal.bg.join(",")})`;
      row.forEach((v, p) => {  // veil each patch by how little weight it gets (relative to the strongest)
        ctx.globalAlpha = 0.8 * (1 - v / top);
        ctx.fillRect((p % cols) * pw, Math.floor(p / cols) * ph, pw, ph);
      });
      ctx.globalAlpha = 1;
      const qp = q - image.first_patch;
      if (qp >= 0 && qp < rows * cols) {
        ctx.strokeStyle = pal.accent;
        ctx.lineWidth = 2;
        ctx.strokeRect((qp % cols) * pw + 1, Math.floor(qp / cols) * ph + 1, pw - 2, ph - 2);
      }
      const best = row.indexOf(Math.max(...row));
      canvas.setAttribute("aria-label", `The input image in a ${rows} × ${cols} grid of patches; the patches that query `
        + `“${shown(this.sentence.tokens[q])}” attends to most are the clearest, the strongest being row ${Math.floor(best / cols) + 1}, column ${best % cols + 1}.`);
    }

    render() {
      const pal = palette();
      const { sentence, layer, head, token } = this.state;
      this.controls.sentence.value = String(sentence);
      this.controls.layer.value = String(layer);
      this.controls.head.value = String(head);
      this.root.dataset.sentence = String(sentence);
      this.root.dataset.layer = String(layer);
      this.root.dataset.head = String(head);
      this.root.dataset.token = token === null ? "" : String(token);
      if (this.hasNext) {
        this.root.dataset.temperature = this.state.temperature.toFixed(1);
        this.root.dataset.topk = String(this.state.topk);
      }
      this.renderTokens(pal);
      const roles = this.data.head_roles || [];
      const role = roles[layer] && roles[layer][head];
      const tokens = this.sentence.tokens.map(shown);
      const name = this.headLabel(layer, head);
      this.role.textContent = `${name.charAt(0).toUpperCase()}${name.slice(1)}${role ? ` — measured role: ${role}` : ""}.` +
        (token === null ? " Hover or focus a token."
                        : ` Row: what “${tokens[token]}” attends to; strongest: ${this.strongest(token, 3)}.`);
      // fit the column: about 380 px for the matrix on a desktop, less on a phone
      const room = Math.max(160, Math.min(380, this.root.clientWidth - 110));
      const cell = Math.max(6, Math.min(28, Math.floor(room / tokens.length)));
      drawMatrix(this.matrixCanvas, this.matrix, token, pal, cell, tokens, this.causal);
      this.matrixCanvas.setAttribute("aria-label",
        `Attention matrix of ${name}: rows are queries, columns are keys, stronger colour means more weight${this.causal ? ", hatched cells are masked later keys" : ""}. The table that follows lists the numbers.`);
      this.renderTable();
      if (this.hasImage) this.renderImage(pal);
      if (this.hasScores) this.renderStages(pal);
      if (this.hasNext) this.renderNext();
      const gridRoom = Math.max(120, Math.min(480, this.root.clientWidth - 40)) - 28;
      const thumb = Math.max(1, Math.min(2, Math.floor(gridRoom / this.data.num_heads / (tokens.length + 2))));
      this.gridCells.forEach((c) => {
        const l = +c.dataset.layer, h = +c.dataset.head;
        drawMatrix(c.firstChild, this.sentence.attention[l][h], null, pal, thumb, null, this.causal);
        const current = l === layer && h === head;
        c.classList.toggle("ae-current", current);
        c.setAttribute("aria-pressed", current ? "true" : "false");
        c.setAttribute("tabindex", current ? "0" : "-1");  // roving focus: one tab stop for the grid
      });
    }

    savePng() {
      // A self-contained picture of the current view: title, matrix and token labels.
      const pal = palette();
      const tokens = this.sentence.tokens.map(shown);
      const n = tokens.length, cell = 24, margin = 110, top = 40, scaleWidth = 70;
      const canvas = document.createElement("canvas");
      canvas.width = margin + n * cell + 20 + scaleWidth;
      canvas.height = Math.max(top + margin + n * cell, top + 220);
      const ctx = canvas.getContext("2d");
      ctx.fillStyle = `rgb(${pal.bg.join(",")})`;
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.fillStyle = pal.fg;
      ctx.font = "14px sans-serif";
      ctx.fillText(`${this.data.model}: ${this.headLabel(this.state.layer, this.state.head)}`, 10, 22);
      ctx.font = "11px sans-serif";
      const m = this.matrix;
      for (let i = 0; i < n; i++) {
        ctx.textAlign = "right";
        ctx.fillStyle = pal.fg;
        ctx.fillText(tokens[i], margin - 6, top + i * cell + cell * 0.65);
        for (let j = 0; j < n; j++) {
          if (this.causal && j > i) {
            drawMasked(ctx, margin + j * cell, top + i * cell, cell, pal);
            continue;
          }
          ctx.fillStyle = shade(m[i][j], pal);
          ctx.fillRect(margin + j * cell, top + i * cell, cell, cell);
        }
      }
      for (let j = 0; j < n; j++) {
        ctx.save();
        ctx.translate(margin + j * cell + cell * 0.6, top + n * cell + 6);
        ctx.rotate(Math.PI / 3);
        ctx.textAlign = "left";
        ctx.fillStyle = pal.fg;
        ctx.fillText(tokens[j], 0, 0);
        ctx.restore();
      }
      const q = this.state.token;
      if (q !== null) {  // the selected query's row, as on the page
        ctx.strokeStyle = pal.accent;
        ctx.lineWidth = 2;
        ctx.strokeRect(margin + 1, top + q * cell + 1, n * cell - 2, cell - 2);
        ctx.textAlign = "left";
        ctx.fillStyle = pal.fg;
        ctx.fillText(`row: “${tokens[q]}”`, 10, top - 8);
      }
      // the colour scale: 0 (page background) to 1 (strongest)
      const x = margin + n * cell + 24, barHeight = 160;
      for (let y = 0; y < barHeight; y++) {
        ctx.fillStyle = shade(1 - y / (barHeight - 1), pal);
        ctx.fillRect(x, top + y, 14, 1);
      }
      ctx.strokeStyle = pal.fg;
      ctx.lineWidth = 1;
      ctx.strokeRect(x + 0.5, top + 0.5, 14, barHeight);
      ctx.fillStyle = pal.fg;
      ctx.textAlign = "left";
      ctx.fillText("1", x + 20, top + 8);
      ctx.fillText("0", x + 20, top + barHeight);
      ctx.fillText("weight", x - 4, top + barHeight + 18);
      const link = document.createElement("a");
      const slug = String(this.data.model).toLowerCase().replace(/[^a-z0-9]+/g, "-").replace(/^-|-$/g, "");
      link.download = `attention-${slug ? slug + "-" : ""}s${this.state.sentence}-l${this.state.layer}-h${this.state.head}.png`;
      link.href = canvas.toDataURL("image/png");
      document.body.appendChild(link);
      link.click();
      link.remove();
    }
  }

  function init() {
    document.querySelectorAll(".attn-explorer:not([data-ready]):not([data-loading])").forEach((root) => {
      root.setAttribute("data-loading", "true");
      const url = new URL(root.dataset.src, document.baseURI);
      fetch(url)
        .then((response) => {
          if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
          return response.json();
        })
        .then((data) => new Explorer(root, data))
        .catch((error) => {
          root.replaceChildren(el("p", { class: "ae-error", text: `The attention explorer could not load its data (${error.message}). The static figure below shows the same attention.` }));
          root.setAttribute("data-error", "true");
        })
        .finally(() => root.removeAttribute("data-loading"));
    });
  }

  window.attnbookExplorer = { init: init };  // for a page that adds an explorer later (and for tests)

  if (typeof window.document$ !== "undefined" && window.document$.subscribe) {
    window.document$.subscribe(init); // Material: runs on first load and after instant navigation
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
