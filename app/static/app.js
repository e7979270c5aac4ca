// Progressive enhancement only: every page works without JavaScript.
// Announces downloads in a live region, since a browser download gives no on-page feedback
// (buttons with data-job show a job's progress instead: jobs.js).
document.addEventListener("DOMContentLoaded", () => {
  const bars = document.querySelectorAll(".download-bar");
  bars.forEach((bar) => {
    const status = document.createElement("p");
    status.setAttribute("role", "status");
    bar.after(status);
    bar.querySelectorAll("a[download]:not([data-job])").forEach((link) => {
      link.addEventListener("click", () => {
        status.textContent = `Preparing ${link.textContent.trim()} download…`;
        window.setTimeout(() => { status.textContent = ""; }, 4000);
      });
    });
  });
});
