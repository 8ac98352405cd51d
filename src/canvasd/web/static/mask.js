// The mask painter: a canvas over the edit image, at the image's own pixel size (so the mask
// needs no resampling), shown half transparent. Painted pixels are the area to repaint; the
// exported mask follows the OpenAI convention: alpha 0 = edit, opaque = keep.

const PAINT = "rgb(255, 40, 110)";
const MAX_UNDO = 30;

export class MaskPainter {
  constructor(canvas, { brush, eraser }) {
    this.canvas = canvas;
    this.ctx = canvas.getContext("2d", { willReadFrequently: true });
    this.brush = brush; // <input type=range>: brush diameter in screen pixels
    this.eraser = eraser; // <input type=checkbox>
    this.undoStack = [];
    this.painting = false;
    this.last = null;
    canvas.addEventListener("pointerdown", (e) => this.down(e));
    canvas.addEventListener("pointermove", (e) => this.move(e));
    canvas.addEventListener("pointerup", (e) => this.up(e));
    canvas.addEventListener("pointercancel", (e) => this.up(e));
  }

  /** Start over for an image of width x height pixels. */
  reset(width, height) {
    this.canvas.width = width;
    this.canvas.height = height;
    this.undoStack = [];
    this.ctx.clearRect(0, 0, width, height);
  }

  point(e) {
    const r = this.canvas.getBoundingClientRect();
    const sx = this.canvas.width / r.width;
    const sy = this.canvas.height / r.height;
    return { x: (e.clientX - r.left) * sx, y: (e.clientY - r.top) * sy, scale: (sx + sy) / 2 };
  }

  down(e) {
    if (e.button !== undefined && e.button !== 0) return;
    e.preventDefault();
    this.canvas.setPointerCapture(e.pointerId);
    this.undoStack.push(this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height));
    if (this.undoStack.length > MAX_UNDO) this.undoStack.shift();
    this.painting = true;
    this.last = this.point(e);
    this.stroke(this.last, this.last);
  }

  move(e) {
    if (!this.painting) return;
    const p = this.point(e);
    this.stroke(this.last, p);
    this.last = p;
  }

  up(e) {
    if (!this.painting) return;
    this.painting = false;
    this.last = null;
    if (this.canvas.hasPointerCapture(e.pointerId)) this.canvas.releasePointerCapture(e.pointerId);
    this.canvas.dispatchEvent(new Event("change"));
  }

  stroke(a, b) {
    const ctx = this.ctx;
    ctx.save();
    ctx.globalCompositeOperation = this.eraser.checked ? "destination-out" : "source-over";
    ctx.strokeStyle = PAINT;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.lineWidth = Number(this.brush.value) * b.scale;
    ctx.beginPath();
    ctx.moveTo(a.x, a.y);
    ctx.lineTo(b.x + 0.01, b.y);
    ctx.stroke();
    ctx.restore();
  }

  undo() {
    const prev = this.undoStack.pop();
    if (prev) this.ctx.putImageData(prev, 0, 0);
  }

  clear() {
    this.undoStack.push(this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height));
    this.ctx.clearRect(0, 0, this.canvas.width, this.canvas.height);
  }

  get empty() {
    if (!this.canvas.width) return true;
    const px = this.ctx.getImageData(0, 0, this.canvas.width, this.canvas.height).data;
    for (let i = 3; i < px.length; i += 4) if (px[i] !== 0) return false;
    return true;
  }

  /** The mask as a PNG blob: painted -> transparent (edit), elsewhere opaque black (keep). */
  async toBlob() {
    const { width, height } = this.canvas;
    const src = this.ctx.getImageData(0, 0, width, height).data;
    const out = new ImageData(width, height);
    for (let i = 0; i < src.length; i += 4) out.data[i + 3] = src[i + 3] >= 128 ? 0 : 255;
    const c = document.createElement("canvas");
    c.width = width;
    c.height = height;
    c.getContext("2d").putImageData(out, 0, 0);
    return new Promise((resolve) => c.toBlob(resolve, "image/png"));
  }
}
