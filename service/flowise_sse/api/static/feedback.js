// Thumbs up or down on an answer, and an optional comment, where the chatflow's config turns
// feedback on (`chatFeedback.status`). The first rating creates Flowise's feedback on the answer's
// message (POST /v1/chatflows/{id}/feedback, with the `chatMessageId` its `end` carried); a
// changed rating or a comment updates that same feedback (PATCH .../feedback/{feedbackId}). The
// feedback's id and rating are kept with the turn (conversation.js): after a reload the page
// shows the rating and changes it rather than rating the answer twice.

import { api, failureOf } from "./api.js";
import { button, el, iconButton } from "./dom.js";

let boxes = 0; // the comment boxes' ids, for their labels
const RATINGS = [["THUMBS_UP", "thumbsUp", "Good answer"], ["THUMBS_DOWN", "thumbsDown", "Bad answer"]];

/**
 * The feedback controls of one turn: `buttons` (for the turn's actions), `panel` (the comment box
 * and what came of it, under them) and `refresh(shown)`. `context`: the chatflow's id, and
 * save() to keep the conversation once the turn's feedback changed.
 */
export function feedbackControls(turn, context) {
  const buttons = el("span", "feedback");
  const thumbs = RATINGS.map(([rating, name, label]) => {
    const thumb = iconButton(name, label, "icon-button small");
    thumb.dataset.testid = rating === "THUMBS_UP" ? "thumbs-up" : "thumbs-down";
    thumb.addEventListener("click", () => rate(rating));
    buttons.append(thumb);
    return [rating, thumb];
  });

  const panel = el("div", "feedback-panel");
  const box = el("form", "feedback-comment");
  box.dataset.testid = "feedback-comment";
  const label = el("label", "visually-hidden", "Your comment on the answer");
  const text = el("textarea");
  text.dataset.testid = "feedback-text";
  text.rows = 2;
  text.placeholder = "Tell us more (optional)";
  boxes += 1;
  text.id = `feedback-text-${boxes}`;
  label.htmlFor = text.id;
  const sendComment = button("Send", "small");
  sendComment.type = "submit";
  sendComment.dataset.testid = "feedback-send";
  const close = button("Close");
  const row = el("div", "feedback-comment-actions");
  row.append(sendComment, close);
  box.append(label, text, row);
  box.hidden = true;
  const note = el("p", "feedback-note");
  note.dataset.testid = "feedback-note";
  note.setAttribute("role", "status");
  note.hidden = true;
  panel.append(box, note);

  let busy = false;
  const path = () => `v1/chatflows/${encodeURIComponent(context.flowId)}/feedback`;

  function say(text, failed = false) {
    note.textContent = text;
    note.classList.toggle("failed", failed);
    note.hidden = !text;
  }

  function fail(err, what) {
    const { code, message } = failureOf(err);
    say(`${what}: ${message} (${code})`, true);
  }

  function showBox(shown) {
    box.hidden = !shown;
    if (shown) {
      text.value = (turn.feedback && turn.feedback.content) || "";
      text.focus();
    }
  }

  function show() {
    for (const [rating, thumb] of thumbs) {
      thumb.setAttribute("aria-pressed", String(Boolean(turn.feedback && turn.feedback.rating === rating)));
      thumb.disabled = busy;
    }
    sendComment.disabled = busy;
  }

  async function rate(rating) {
    if (busy) return;
    if (turn.feedback && turn.feedback.rating === rating) {
      showBox(box.hidden); // the rating stands: this opens (or closes) the comment
      return;
    }
    busy = true;
    show();
    say("");
    try {
      if (!turn.feedback) {
        const row = await api("POST", path(), { chatId: turn.chatId, messageId: turn.messageId, rating });
        turn.feedback = { id: String(row.id), rating, content: null };
      } else {
        await api("PATCH", `${path()}/${encodeURIComponent(turn.feedback.id)}`, { chatId: turn.chatId, rating });
        turn.feedback.rating = rating;
      }
      context.save();
      showBox(true);
    } catch (err) {
      fail(err, "The rating was not saved");
    } finally {
      busy = false;
      show();
    }
  }

  box.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (busy || !turn.feedback) return;
    const content = text.value.trim();
    busy = true;
    show();
    try {
      await api("PATCH", `${path()}/${encodeURIComponent(turn.feedback.id)}`, { chatId: turn.chatId, content });
      turn.feedback.content = content;
      context.save();
      showBox(false);
      say("Thank you: your comment was sent.");
    } catch (err) {
      fail(err, "The comment was not sent");
    } finally {
      busy = false;
      show();
    }
  });
  close.addEventListener("click", () => showBox(false));
  text.addEventListener("keydown", (event) => {
    if (event.key === "Escape") {
      event.stopPropagation();
      showBox(false);
    }
  });

  return {
    buttons,
    panel,
    /** Shown only on a finished answer that Flowise stored (it has a message id). */
    refresh(shown) {
      buttons.hidden = !shown;
      panel.hidden = !shown;
      show();
    },
  };
}
