"""The amplitude of one frequency in what a page's <audio> element plays, read in the
browser itself: a WebAudio analyser on the element and a Hann-windowed DFT at exactly
that frequency, in full-scale units like ``audio.py``'s. For Playwright's ``evaluate``
with ``[selector, hz]``; the page then answers ``window.toneLevel()``.
"""

TONE_ANALYSER_JS = """([selector, hz]) => {
  const player = document.querySelector(selector);
  const ctx = new AudioContext();
  let source;
  try { source = ctx.createMediaElementSource(player); }
  catch (e) { source = ctx.createMediaStreamSource(player.captureStream()); }
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 8192;
  const mute = ctx.createGain();
  mute.gain.value = 0;
  source.connect(analyser); analyser.connect(mute); mute.connect(ctx.destination);
  ctx.resume();
  const buf = new Float32Array(analyser.fftSize);
  window.toneLevel = () => {
    analyser.getFloatTimeDomainData(buf);
    let re = 0, im = 0, wsum = 0;
    const n = buf.length, w0 = 2 * Math.PI * hz / ctx.sampleRate;
    for (let k = 0; k < n; k++) {
      const w = 0.5 - 0.5 * Math.cos(2 * Math.PI * k / (n - 1));
      re += w * buf[k] * Math.cos(w0 * k); im -= w * buf[k] * Math.sin(w0 * k);
      wsum += w;
    }
    return 2 * Math.hypot(re, im) / wsum;
  };
}"""
