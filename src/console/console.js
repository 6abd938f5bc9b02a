// A little progressive enhancement: the page works without it (forms post and redirect).
"use strict";
(function () {
  const box = document.getElementById("autorefresh");
  if (!box) return;
  box.checked = sessionStorage.getItem("lienthong.autorefresh") === "1";
  let timer = null;
  const arm = () => {
    if (timer) clearTimeout(timer);
    timer = box.checked ? setTimeout(() => location.reload(), 10000) : null;
  };
  box.addEventListener("change", () => {
    sessionStorage.setItem("lienthong.autorefresh", box.checked ? "1" : "0");
    arm();
  });
  arm();
  document.documentElement.dataset.js = "ready";
})();
