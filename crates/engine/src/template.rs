//! Renders a conversation with the model's own chat template (`tokenizer.chat_template`, Jinja).

use minijinja::{Environment, ErrorKind, context};
use serde::Serialize;

use crate::error::LoadError;

/// ChatML, for GGUF files that carry no template.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template.
#[derive(Debug)]
pub struct ChatTemplate {
    env: Environment<'static>,
    bos_token: String,
    eos_token: String,
}

impl ChatTemplate {
    /// Compiles `source` as Hugging Face's `apply_chat_template` does: `trim_blocks` and `lstrip_blocks` on,
    /// Python string methods available, and `raise_exception` defined.
    pub fn new(source: &str, bos_token: &str, eos_token: &str) -> Result<Self, LoadError> {
        let mut env = Environment::new();
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function(
            "raise_exception",
            |message: String| -> Result<String, minijinja::Error> {
                Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
            },
        );
        env.add_template_owned("chat", source.to_owned())
            .map_err(|e| LoadError::Template(e.to_string()))?;
        Ok(Self {
            env,
            bos_token: bos_token.to_owned(),
            eos_token: eos_token.to_owned(),
        })
    }

    /// Renders the conversation and the assistant's generation prompt.
    pub fn render(&self, messages: &[Message]) -> Result<String, String> {
        let template = self.env.get_template("chat").map_err(|e| e.to_string())?;
        template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(|e| match e.detail() {
                Some(detail) => format!("{}: {detail}", e.kind()),
                None => e.to_string(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chatml_renders_roles_and_generation_prompt() {
        let t = ChatTemplate::new(CHATML_TEMPLATE, "", "<|im_end|>").expect("template compiles");
        let out = t
            .render(&[Message::new("system", "Be brief."), Message::new("user", "Hi")])
            .expect("renders");
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn raise_exception_becomes_an_error() {
        let src = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be from the user') }}{% endif %}ok";
        let t = ChatTemplate::new(src, "", "").expect("template compiles");
        let err = t.render(&[Message::new("assistant", "x")]).expect_err("raises");
        assert!(err.contains("first message must be from the user"), "{err}");
        assert_eq!(t.render(&[Message::new("user", "x")]).expect("renders"), "ok");
    }

    #[test]
    fn python_string_methods_work() {
        let src = "{% for m in messages %}[{{ m['content'].strip() }}]{% endfor %}";
        let t = ChatTemplate::new(src, "", "").expect("template compiles");
        assert_eq!(
            t.render(&[Message::new("user", "  padded  ")]).expect("renders"),
            "[padded]"
        );
    }

    #[test]
    fn a_broken_template_fails_to_load() {
        assert!(matches!(
            ChatTemplate::new("{% for %}", "", ""),
            Err(LoadError::Template(_))
        ));
    }
}
