/* The Attention Book: interactive attention explorer.
 *
 * Markup: <div class="attn-explorer" data-src="…/explorer.json"></div>
 * Data (written by a chapter script):
 *   {model, num_layers, num_heads, head_roles[layer][head],
 *    sentences: [{text, tokens: [..], attention[layer][head][query][key]}]}
 * Everything is served by the site itself; nothing is fetched from elsewhere.
 * State is mirrored on the root element (data-sentence, data-layer, data-head,
 * data-token) so that it can be inspected, and tested, from outside.
 *
 * Keyboard: the tokens and the layer × head grid are one tab stop each (roving focus);
 * the arrow keys (and Home/End) move inside them. Screen readers get the weights as
 * text: each token's label carries its weight, a live line names the strongest keys,
 * and a visually hidden table holds the current head's matrix.
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
    return {
      bg: parseColor(cssColor("--md-default-bg-color", dark ? "#1e2129" : "#ffffff")),
      fg: cssColor("--md-default-fg-color", dark ? "#e3e6ea" : "#1f2328"),
      hot: parseColor(dark ? "#c7e6ff" : "#08306b"),
      mid: parseColor(dark ? "#3d8fd1" : "#4292c6"),
      accent: cssColor("--md-accent-fg-color", "#ff6e42"),
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

  function select(label, cls, options) {
    const id = `${cls}-${Math.random().toString(36).slice(2, 8)}`;
    const box = el("select", { class: cls, id: id });
    options.forEach(([value, text]) => box.appendChild(el("option", { value: String(value), text: text })));
    return [el("label", { for: id, text: label }), box];
  }

  // Draw a (q_len, k_len) matrix; with labels, queries are named on the left, keys on top.
  function drawMatrix(canvas, matrix, query, pal, cellSize, labels) {
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

  class Explorer {
    constructor(root, data) {
      this.root = root;
      this.data = data;
      this.state = { sentence: 0, layer: 0, head: 0, token: null };
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

    build() {
      const d = this.data;
      window.addEventListener("resize", () => {
        clearTimeout(this.resizeTimer);
        this.resizeTimer = setTimeout(() => this.render(), 150);
      });
      const [sLabel, sentence] = select("Sentence", "ae-sentence", d.sentences.map((s, i) => [i, s.text]));
      const [lLabel, layer] = select("Layer", "ae-layer", [...Array(d.num_layers).keys()].map((i) => [i, `layer ${i}`]));
      const [hLabel, head] = select("Head", "ae-head", [...Array(d.num_heads).keys()].map((i) => [i, `head ${i}`]));
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
          const cell = el("button", {
            class: "ae-cell", type: "button", "data-layer": l, "data-head": h,
            "aria-label": `layer ${l}, head ${h}${role ? ": " + role : ""}`, title: `layer ${l}, head ${h}${role ? " — " + role : ""}`,
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
      const main = el("div", { class: "ae-main" }, [
        el("div", { class: "ae-left" }, [this.tokens, this.role, this.matrixCanvas,
          el("div", { class: "ae-sr" }, [this.table])]),
        el("div", { class: "ae-right" }, [el("p", { class: "ae-caption", text: "All layers × heads" }), this.grid]),
      ]);
      this.root.replaceChildren(bar, main);
      this.observer = new MutationObserver(() => this.render());
      this.observer.observe(document.body, { attributes: true, attributeFilter: ["data-md-color-scheme"] });
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
          const b = el("button", { class: "ae-token", type: "button", "data-index": i, text: t, tabindex: i === 0 ? "0" : "-1" });
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
        b.classList.toggle("ae-query", isQuery);
        b.setAttribute("aria-pressed", isQuery ? "true" : "false");
        b.setAttribute("tabindex", j === (q === null ? 0 : q) ? "0" : "-1");  // roving focus
        if (q === null) {
          b.style.background = "";
          b.style.color = "";
          b.removeAttribute("data-weight");
          b.setAttribute("aria-label", tokens[j]);
          b.title = "hover or focus to see what this token attends to";
        } else {
          const w = this.matrix[q][j];
          b.style.background = shade(w, pal);
          b.style.color = w > 0.45 ? (pal.bg[0] > 128 ? "#ffffff" : "#10131a") : "";
          b.setAttribute("data-weight", w.toFixed(3));
          b.setAttribute("aria-label", isQuery ? `${tokens[j]} (query), weight on itself ${w.toFixed(3)}`
                                                : `${tokens[j]}, weight ${w.toFixed(3)}`);
          b.title = `${tokens[q]} → ${tokens[j]}: ${w.toFixed(3)}`;
        }
      });
    }

    strongest(q, k) {
      const row = this.matrix[q].map((w, j) => [w, j]).sort((a, b) => b[0] - a[0]).slice(0, k);
      return row.map(([w, j]) => `“${this.sentence.tokens[j]}” ${w.toFixed(2)}`).join(", ");
    }

    renderTable() {
      // the current head's weights as a table, for screen readers (visually hidden)
      const tokens = this.sentence.tokens;
      const caption = el("caption", { text: `Attention weights of layer ${this.state.layer}, head ${this.state.head}: rows are queries, columns are keys.` });
      const head = el("tr", {}, [el("th", { scope: "col", text: "query \\ key" }),
        ...tokens.map((t) => el("th", { scope: "col", text: t }))]);
      const rows = this.matrix.map((row, i) => el("tr", {}, [el("th", { scope: "row", text: tokens[i] }),
        ...row.map((w) => el("td", { text: w.toFixed(2) }))]));
      this.table.replaceChildren(caption, el("thead", {}, [head]), el("tbody", {}, rows));
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
      this.renderTokens(pal);
      const roles = this.data.head_roles || [];
      const role = roles[layer] && roles[layer][head];
      const tokens = this.sentence.tokens;
      this.role.textContent = `Layer ${layer}, head ${head}${role ? ` — measured role: ${role}` : ""}.` +
        (token === null ? " Hover or focus a token."
                        : ` Row: what “${tokens[token]}” attends to; strongest: ${this.strongest(token, 3)}.`);
      // fit the column: about 380 px for the matrix on a desktop, less on a phone
      const room = Math.max(160, Math.min(380, this.root.clientWidth - 110));
      const cell = Math.max(6, Math.min(28, Math.floor(room / tokens.length)));
      drawMatrix(this.matrixCanvas, this.matrix, token, pal, cell, tokens);
      this.matrixCanvas.setAttribute("aria-label",
        `Attention matrix of layer ${layer}, head ${head}: rows are queries, columns are keys, stronger colour means more weight. The table that follows lists the numbers.`);
      this.renderTable();
      const gridRoom = Math.max(120, Math.min(480, this.root.clientWidth - 40)) - 28;
      const thumb = Math.max(1, Math.min(2, Math.floor(gridRoom / this.data.num_heads / (tokens.length + 2))));
      this.gridCells.forEach((c) => {
        const l = +c.dataset.layer, h = +c.dataset.head;
        drawMatrix(c.firstChild, this.sentence.attention[l][h], null, pal, thumb);
        const current = l === layer && h === head;
        c.classList.toggle("ae-current", current);
        c.setAttribute("aria-pressed", current ? "true" : "false");
        c.setAttribute("tabindex", current ? "0" : "-1");  // roving focus: one tab stop for the grid
      });
    }

    savePng() {
      // A self-contained picture of the current view: title, matrix and token labels.
      const pal = palette();
      const tokens = this.sentence.tokens;
      const n = tokens.length, cell = 24, margin = 110, top = 40, scaleWidth = 70;
      const canvas = document.createElement("canvas");
      canvas.width = margin + n * cell + 20 + scaleWidth;
      canvas.height = Math.max(top + margin + n * cell, top + 220);
      const ctx = canvas.getContext("2d");
      ctx.fillStyle = `rgb(${pal.bg.join(",")})`;
      ctx.fillRect(0, 0, canvas.width, canvas.height);
      ctx.fillStyle = pal.fg;
      ctx.font = "14px sans-serif";
      ctx.fillText(`${this.data.model}: layer ${this.state.layer}, head ${this.state.head}`, 10, 22);
      ctx.font = "11px sans-serif";
      const m = this.matrix;
      for (let i = 0; i < n; i++) {
        ctx.textAlign = "right";
        ctx.fillStyle = pal.fg;
        ctx.fillText(tokens[i], margin - 6, top + i * cell + cell * 0.65);
        for (let j = 0; j < n; j++) {
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
      link.download = `attention-s${this.state.sentence}-l${this.state.layer}-h${this.state.head}.png`;
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

  if (typeof window.document$ !== "undefined" && window.document$.subscribe) {
    window.document$.subscribe(init); // Material: runs on first load and after instant navigation
  } else if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", init);
  } else {
    init();
  }
})();
